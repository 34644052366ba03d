"""bench/pool.py: long-lived timing workers answered slot by slot, in alternating order."""

from __future__ import annotations

import sys

import pytest

from bench.pool import Pool, paired_ratios

# A worker whose call sleeps `ms` milliseconds (bench.worker.serve on stdin / stdout).
WORKER = (
    "import sys, time; sys.path.insert(0, {root!r}); from bench import worker; "
    "worker.WARMUP_S = 0.01; ms = float(sys.argv[1]); "
    "worker.serve(lambda: time.sleep(ms / 1000))"
)


def _argv(ms: float) -> list[str]:
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    return [sys.executable, "-c", WORKER.format(root=root), str(ms)]


def test_rounds_time_each_worker_in_its_own_process():
    with Pool({"slow": _argv(4.0), "fast": _argv(1.0)}, env={}) as pool:
        assert len(pool.slot("fast", 3)) == 3
        got = pool.rounds(4, runs=3)
    assert set(got) == {"slow", "fast"} and all(len(v) == 4 for v in got.values())
    assert min(got["slow"]) > max(got["fast"])  # 4 ms sleeps against 1 ms
    ratio = paired_ratios(got, "fast")
    assert ratio["fast"] == 1.0 and ratio["slow"] > 2.0


def test_a_failing_worker_is_one_clear_error():
    bad = [sys.executable, "-c", "import sys; sys.stderr.write('no model here'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match="timing worker broken failed: no model here"):
        Pool({"broken": bad}, env={})


def test_paired_ratios_cancel_a_burst_that_hits_one_round():
    got = {"base": [2.0, 2.0, 6.0, 2.0, 2.0], "other": [1.0, 1.0, 3.0, 1.0, 1.0]}
    assert paired_ratios(got, "base")["other"] == 0.5
