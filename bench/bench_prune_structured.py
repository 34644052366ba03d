"""Structured pruning (`--prune macs=X`): quality against the MACs kept, MobileNetV2 and
all-MiniLM-L6-v2, channel choice by OBS against magnitude, one-shot against sequential refit.

    python -m bench.bench_prune_structured [--models mobilenet_v2,minilm] [--damp 1.0]
                                           [--time MACS] [--runs N]

MobileNetV2: calibration on the 32 calibration crops of bench/models/inputs.py, top-1
agreement with fp32 on the 64 evaluation crops (other photos). MiniLM: calibration on the
bench_int4 CALIB sentences, min / mean cosine of the sentence embedding on the 24 evaluation
SENTENCES (none shared). Per MAC level, the same code as `compile --prune macs=X`
(`compress/channels/`): channels chosen by OBS or by the consumer rows' norm (magnitude), the
kept rows as they are, the one-shot refit, or the sequential refit. Every point runs through
one build with the consumers' weights as inputs (`channels/sequential.py` probe_for): a
pruned region runs with zero rows for its dropped channels and its bias as a shift, which
computes what the smaller graph computes (tests/compress/test_prune_channels.py).

--time MACS compiles the dense and the `--prune macs=MACS` models through graphopt.compile
and times them alternated in one process (2 threads): run it on a quiet machine.
Writes bench/results/prune_structured.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_prune_accuracy import _load, _say, alternate, quality
from bench.writing import write_results
from graphopt import env

env.configure_for_benchmarks(spinning=False)

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = {"mobilenet_v2": (0.95, 0.9, 0.85, 0.8, 0.75), "minilm": (0.9, 0.8, 0.7)}
# (label, select, refit, sequential)
VARIANTS = (
    ("magnitude, kept rows", "magnitude", False, False),
    ("magnitude + sequential refit", "magnitude", True, True),
    ("OBS + one-shot refit", "obs", True, False),
    ("OBS + sequential refit", "obs", True, True),
)


def _feeds(name: str) -> tuple[list[dict], list[dict]]:
    """(calibration feeds, evaluation feeds)."""
    if name == "mobilenet_v2":
        from bench.bench_int8 import calibration_images
        from bench.models.inputs import split_crops

        calib = [{"input": x} for x in calibration_images()]
        return calib, [{"input": x} for _, x in split_crops("evaluation")]
    from bench.bench_int4 import CALIB
    from bench.models.inputs import sentence_batch, tokenize

    return [tokenize(s) for s in CALIB], sentence_batch(24)


class Setup:
    """One model: -O2 graph, regions, dense statistics, the probe, fp32 outputs."""

    def __init__(self, name: str) -> None:
        from bench.models.export import export
        from graphopt.compress.channels.chains import find_regions
        from graphopt.compress.channels.fit import RegionStats
        from graphopt.compress.channels.method import MASK_INPUT, _rows
        from graphopt.compress.channels.sequential import probe_for
        from graphopt.frontend import import_onnx
        from graphopt.pipeline import instantiate, parse_pipeline, run_passes
        from graphopt.target_infra import host_target

        self.name, self.src = name, export(name)
        self.mod = run_passes(import_onnx(self.src).mod, instantiate(parse_pipeline("O2")))
        self.regions = find_regions(self.mod)
        self.params = [p.name for p in self.mod["main"].params]
        self.calib, self.eval = _feeds(name)
        self.target = host_target()
        _say(f"[{name}] building the probe ({len(self.regions)} regions)")
        self.probe = probe_for(self.mod, self.regions, self.target)
        probe, index = self.probe
        self.stats = {r.name: RegionStats() for r in self.regions}
        for feed in self.calib:
            out = probe.run(self._arrays(feed), {})
            for r in self.regions:
                x = np.asarray(out[index[r.consumer.name]])
                self.stats[r.name].add(_rows(x, r.axis, feed.get(MASK_INPUT)))
        self.ref = [probe.run(self._arrays(f), {})[-1] for f in self.eval]

    def _arrays(self, feed: dict) -> list[np.ndarray]:
        return [feed[p] for p in self.params]

    def score(self, decision: dict) -> dict[str, Any]:
        from bench.bench_int8 import cosine_quality
        from graphopt.compress.channels.sequential import full_rows

        weights, shifts = {}, {}
        for r in self.regions:
            d = decision[r.name]
            weights[r.consumer.name] = full_rows(r.consumer, d["keep"], d["weight"])
            shifts[r.consumer.name] = -np.asarray(d["bias"], np.float32)
        got = [self.probe[0].run(self._arrays(f), weights, shifts)[-1] for f in self.eval]
        if self.name == "mobilenet_v2":
            return quality(self.ref, got)
        return cosine_quality(self.ref, got)


def point(s: Setup, macs: float, variant: tuple, damp: float) -> dict[str, Any]:
    """One (MACs, variant): the kept channels and refit as `--prune macs=` makes them."""
    from graphopt.compress.channels.method import ChannelOptions, decide, region_budget
    from graphopt.compress.channels.sequential import sequential_refit

    label, select, refit, sequential = variant
    o = ChannelOptions(macs, "bench", select=select, refit=refit, damp=damp)
    start = time.perf_counter()
    all_macs, per_channel, target = region_budget(s.mod["main"], s.regions, macs, o.min_keep)
    decision = decide(s.regions, s.stats, per_channel, target, o)
    if sequential:
        kept = {n: d["keep"] for n, d in decision.items()}
        decision = sequential_refit(
            s.mod, s.regions, s.calib, kept, damp, s.target, lambda _m: None, probe=s.probe
        )
    removed = sum(
        (r.channels - len(decision[r.name]["keep"])) * per_channel[r.name] for r in s.regions
    )
    row = {"macs_target": macs, "macs": round(1 - removed / all_macs, 4), "variant": label}
    row.update(s.score(decision), seconds=round(time.perf_counter() - start, 1))
    _say(f"[{s.name}] {row} (load {_load()})")
    return row


def timed(s: Setup, macs: float, damp: float, runs: int) -> dict[str, Any]:
    """`--prune macs=MACS` compiled through graphopt.compile and timed against the dense model."""
    import graphopt
    from graphopt.compress.channels.method import ChannelOptions, Channels

    with tempfile.TemporaryDirectory(prefix="prune-structured-") as tmp:
        work = Path(tmp)
        calib = work / "calib.npz"
        np.savez(calib, **{p: np.concatenate([f[p] for f in s.calib]) for p in s.params})
        opts = {"num_cores": "2"}
        method = Channels(ChannelOptions(macs, str(calib), damp=damp))
        pruned = graphopt.compile(
            s.src, work / "pruned", target_options=opts, compression=[method], progress=_say
        )
        dense = graphopt.compile(s.src, work / "dense", target_options=opts)
        return {"macs": macs, "ratio": pruned.manifest["channels"]["ratio"],
                "timing": alternate(dense, pruned, s.eval[0], runs)}  # fmt: skip


def markdown(info: dict[str, Any]) -> str:
    lines = [
        "# Structured pruning (`--prune macs=X`): quality against MACs",
        "",
        f"`python -m bench.bench_prune_structured` on {info['machine'].get('cpu', '?')}; "
        f"damp {info['damp']}; load average {info['load']} -> {info['load_end']}.",
    ]
    for name, m in info["models"].items():
        mobile = name == "mobilenet_v2"
        what = "top-1 agreement with fp32" if mobile else "min cosine of the embedding"
        lines += ["", f"## {name}: {what} ({m['calibration']} calibration, {m['scored']} scored)"]
        lines += ["", "| MACs | " + " | ".join(v[0] for v in VARIANTS) + " |"]
        lines.append("|---" * (len(VARIANTS) + 1) + "|")
        for level in m["levels"]:
            rows = [r for r in m["points"] if r["macs_target"] == level]
            cells = [f"{rows[0]['macs']:.2f}x"]
            for v in VARIANTS:
                r = next(r for r in rows if r["variant"] == v[0])
                cells.append(
                    f"{r['top1']}/{r['n']} (cos {r['cosine']})"
                    if mobile
                    else f"{r['min_cosine']:.3f} (mean {r['mean_cosine']:.3f})"
                )
            lines.append("| " + " | ".join(cells) + " |")
        t = m.get("time")
        if t:
            tt = t["timing"]
            lines += [
                "",
                f"Speed at {t['ratio']:.2f}x MACs (`--prune macs={t['macs']}`, 2 threads, "
                f"{tt['runs']} alternated calls): dense {tt['median_ms']['dense']} ms, pruned "
                f"{tt['median_ms']['pruned']} ms: **{tt['speedup']}x** (load {tt['load'][0]} -> "
                f"{tt['load'][1]}).",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from graphopt.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,minilm")
    ap.add_argument("--damp", type=float, default=1.0)
    ap.add_argument("--time", type=float, default=None, help="compile and time at these MACs")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--stem", default="prune_structured")
    args = ap.parse_args(argv)
    info: dict[str, Any] = {"damp": args.damp, "load": _load(), "models": {}}
    for name in args.models.split(","):
        s = Setup(name)
        m = {"calibration": len(s.calib), "scored": len(s.eval), "levels": list(LEVELS[name])}
        m["points"] = [point(s, lv, v, args.damp) for lv in LEVELS[name] for v in VARIANTS]
        if args.time is not None:
            m["time"] = timed(s, args.time, args.damp, args.runs)
        info["models"][name] = m
    info["load_end"] = _load()
    info["machine"] = machine_info()
    write_results(RESULTS, args.stem, info, markdown(info))
    print(markdown(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
