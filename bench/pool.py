"""Contestants in long-lived processes, timed in short interleaved slots.

A benchmark that starts one process per contestant and round times each contestant over a
second or more at a time; on these shared VMs the host's load comes in bursts of seconds, so
one burst lands on one contestant's round and moves a median over a handful of rounds (one
runtime's rounds of MobileNetV2 ranged 2.4-5.2 ms in one run). Here every contestant keeps its
own process (`bench.worker.serve`) and the parent asks each in turn for a slot of a few
dozen calls, many rounds over, in alternating order: a burst then falls on neighbouring slots
of every contestant, and ratios taken within a round (`paired_ratios`) cancel it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

# Between two slots: longer than any runtime's idle-thread spin (graphopt's and onnxruntime's
# GRAPHOPT_SPIN_US, 200 us; OpenVINO's TBB workers), so a contestant's spinning threads do not
# share the cores with the next one's work.
GAP_S = 0.01


class Pool:
    """One served worker process per contestant (`commands`: key -> argv)."""

    def __init__(self, commands: Mapping[str, Sequence[str]], env: Mapping[str, str]):
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, object] = {}  # each worker's stderr (a pipe could fill and block)
        try:
            for key, argv in commands.items():  # one at a time: warm-ups do not overlap
                self.logs[key] = log = tempfile.TemporaryFile("w+")
                proc = subprocess.Popen(
                    list(argv), env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log, text=True,
                )  # fmt: skip
                self.procs[key] = proc
                self._expect(key, "ready")
        except BaseException:
            self.close()
            raise

    def _expect(self, key: str, word: str | None = None) -> str:
        proc = self.procs[key]
        line = proc.stdout.readline() if proc.stdout else ""
        if not line or (word is not None and line.strip() != word):
            proc.kill()
            proc.wait()
            log = self.logs[key]
            log.seek(0)
            err = log.read()
            raise RuntimeError(f"timing worker {key} failed: {(line + err).strip()[-500:]}")
        return line

    def slot(self, key: str, runs: int) -> list[float]:
        """Milliseconds of `runs` calls of one contestant."""
        proc = self.procs[key]
        assert proc.stdin is not None
        proc.stdin.write(f"{runs}\n")
        proc.stdin.flush()
        return json.loads(self._expect(key))["ms"]

    def rounds(
        self, rounds: int, runs: int, say: Callable[[str], None] = lambda _m: None
    ) -> dict[str, list[float]]:
        """Per contestant, the median ms of its slot in each round; rounds alternate the order."""
        keys = list(self.procs)
        got: dict[str, list[float]] = {k: [] for k in keys}
        for r in range(rounds):
            for key in keys if r % 2 == 0 else keys[::-1]:
                time.sleep(GAP_S)
                got[key].append(statistics.median(self.slot(key, runs)))
            say(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in got.items()))
        return got

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.stdin:
                proc.stdin.close()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in self.logs.values():
            log.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def paired_ratios(got: Mapping[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of each contestant's time over `base`'s in the same round."""
    return {k: statistics.median(a / b for a, b in zip(v, got[base])) for k, v in got.items()}
