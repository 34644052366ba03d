"""Structured pruning (`--prune macs=X`): quality against the MACs kept, MobileNetV2,
EfficientNet-Lite0 and all-MiniLM-L6-v2, channel choice by OBS against magnitude, one-shot
against sequential refit, block distillation.

    python -m bench.bench_prune_structured [--models mobilenet_v2,minilm,efficientnet_lite0]
                                           [--damp 1.0]
                                           [--time MACS] [--runs N]

MobileNetV2 and EfficientNet-Lite0: calibration on the 32 calibration crops of
bench/models/inputs.py, top-1 agreement with fp32 on the 64 evaluation crops (other
photos). MiniLM: calibration on the
bench_int4 CALIB sentences, min / mean cosine of the sentence embedding on the 24 evaluation
SENTENCES (none shared). Per MAC level, the same code as `compile --prune macs=X`
(`compress/channels/`): channels chosen by OBS or by the consumer rows' norm (magnitude), the
kept rows as they are, the one-shot refit, or the sequential refit. Every point runs through
one build with the consumers' weights as inputs (`channels/sequential.py` probe_for): a
pruned region runs with zero rows for its dropped channels and its bias as a shift, which
computes what the smaller graph computes (tests/compress/test_prune_channels.py); the
producers' and depthwise convs' weights are inputs too, for block distillation
(`distill=STEPS`, tests/compress/test_distill_channels.py).

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

from bench.bench_prune_accuracy import (
    _load,
    _say,
    alternate,
    dense_vs_pruned,
    finish,
    quality,
    timing_protocol,
)
from graphopt import env

env.configure_for_benchmarks(spinning=False)

CNNS = ("mobilenet_v2", "efficientnet_lite0")  # scored by top-1 agreement on photo crops
LEVELS = {"mobilenet_v2": (0.95, 0.9, 0.85, 0.8, 0.75), "minilm": (0.9, 0.8, 0.7)}
LEVELS["efficientnet_lite0"] = LEVELS["mobilenet_v2"]
KINDS = {"mobilenet_v2": ("channels",), "minilm": ("channels", "heads", "all")}
KINDS["efficientnet_lite0"] = KINDS["mobilenet_v2"]
# (label, select, refit, sequential: False, "local" (consumer outputs) or "residual",
#  Adam steps of block distillation after the refit)
VARIANTS = (
    ("magnitude, kept rows", "magnitude", False, False, 0),
    ("magnitude + sequential refit", "magnitude", True, "residual", 0),
    ("OBS + one-shot refit", "obs", True, False, 0),
    ("OBS + sequential refit", "obs", True, "local", 0),
    ("OBS + sequential refit + residual", "obs", True, "residual", 0),
    ("OBS + sequential refit + residual + block distillation", "obs", True, "residual", 300),
    ("OBS + one-shot refit + block distillation", "obs", True, False, 300),
)


def _feeds(name: str, role: str = "evaluation") -> tuple[list[dict], list[dict]]:
    """(calibration feeds, scored feeds: MobileNetV2's `role` crops, validation for choosing
    settings)."""
    if name in CNNS:
        from bench.bench_int8 import calibration_images
        from bench.models.inputs import split_crops

        calib = [{"input": x} for x in calibration_images()]
        return calib, [{"input": x} for _, x in split_crops(role)]
    from bench.bench_int4 import CALIB
    from bench.models.inputs import sentence_batch, tokenize

    return [tokenize(s) for s in CALIB], sentence_batch(24)


class Setup:
    """One model: -O2 graph, regions, dense statistics, the probe, fp32 outputs."""

    def __init__(self, name: str, role: str = "evaluation") -> None:
        from bench.models.export import export
        from graphopt.compress.channels.chains import Region
        from graphopt.compress.channels.fit import RegionStats
        from graphopt.compress.channels.heads import find_all
        from graphopt.compress.channels.method import MASK_INPUT, _rows
        from graphopt.compress.channels.sequential import probe_for
        from graphopt.compress.common.layers import find_layers
        from graphopt.frontend import import_onnx
        from graphopt.pipeline import instantiate, parse_pipeline, run_passes
        from graphopt.target_infra import host_target

        self.name, self.src = name, export(name)
        # fold-pad as `--prune macs` runs it (Channels.requires)
        pipeline = instantiate(parse_pipeline("O2,fold-pad"))
        self.mod = run_passes(import_onnx(self.src).mod, pipeline)
        self.regions = find_all(self.mod)
        self.params = [p.name for p in self.mod["main"].params]
        self.calib, self.eval = _feeds(name, role)
        self.target = host_target()
        _say(f"[{name}] building the probe ({len(self.regions)} regions)")
        self.layers = {ly.name: ly for ly in find_layers(self.mod["main"])}
        chains = [r for r in self.regions if isinstance(r, Region)]
        more = [r.producer.name for r in chains]
        more += [ly.name for ly in self.layers.values() for r in chains if ly.var in r.bindings]
        self.probe = probe_for(self.mod, self.regions, self.target, more=more)
        probe, index = self.probe.runner, self.probe.index
        self.stats = {r.name: RegionStats() for r in self.regions}
        for feed in self.calib:
            out = probe.run(self._arrays(feed), {})
            for r in self.regions:
                x = np.asarray(out[index[r.consumer.name]])
                self.stats[r.name].add(_rows(x, r, feed.get(MASK_INPUT)))
        self.ref = [probe.run(self._arrays(f), {})[-1] for f in self.eval]

    def _arrays(self, feed: dict) -> list[np.ndarray]:
        return [feed[p] for p in self.params]

    def score(self, decision: dict) -> dict[str, Any]:
        from bench.bench_int8 import cosine_quality
        from graphopt.compress.channels.distill import probe_inputs

        regions = [r for r in self.regions if r.name in decision]
        weights, shifts = probe_inputs(regions, decision, self.layers)
        got = [self.probe.runner.run(self._arrays(f), weights, shifts)[-1] for f in self.eval]
        if self.name in CNNS:
            return quality(self.ref, got)
        return cosine_quality(self.ref, got)


def point(s: Setup, macs: float, variant: tuple, damp: float, kinds: str) -> dict[str, Any]:
    """One (MACs, variant): the kept channels and refit as `--prune macs=` makes them."""
    from graphopt.compress.channels.heads import find_all
    from graphopt.compress.channels.method import ChannelOptions, decide, region_budget
    from graphopt.compress.channels.sequential import sequential_refit

    label, select, refit, sequential, distill_steps = variant
    o = ChannelOptions(macs, "bench", select=select, refit=refit, damp=damp, kinds=kinds)
    start = time.perf_counter()
    regions = [r for r in s.regions if r.name in {x.name for x in find_all(s.mod, kinds)}]
    all_macs, per_channel, target = region_budget(s.mod["main"], regions, macs, o.min_keep)
    decision = decide(regions, s.stats, per_channel, target, o)
    if sequential:
        kept = {n: d["keep"] for n, d in decision.items()}
        decision = sequential_refit(
            s.mod, regions, s.calib, kept, damp, s.target, lambda _m: None, probe=s.probe,
            residual=sequential == "residual",
        )  # fmt: skip
    if distill_steps:
        from graphopt.compress.channels.distill import distill

        decision, _gains = distill(
            s.mod, regions, s.calib, decision, s.target, lambda _m: None, steps=distill_steps
        )
    removed = sum(
        (r.channels - len(decision[r.name]["keep"])) * per_channel[r.name] for r in regions
    )
    row = {"macs_target": macs, "macs": round(1 - removed / all_macs, 4), "variant": label}
    row.update(kinds=kinds, **s.score(decision), seconds=round(time.perf_counter() - start, 1))
    _say(f"[{s.name}] {row} (load {_load()})")
    return row


def _point_or_error(s: Setup, macs: float, variant: tuple, damp: float, kinds: str) -> dict:
    """`point`, or the reason the level is out of reach (heads alone hold too few MACs)."""
    from graphopt.compress.common.errors import CalibrationError

    try:
        return point(s, macs, variant, damp, kinds)
    except CalibrationError as err:
        _say(f"[{s.name}] {kinds} at {macs}: {err}")
        return {"macs_target": macs, "variant": variant[0], "kinds": kinds, "error": str(err)}


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


def _cell(r: dict, mobile: bool) -> str:
    if "error" in r:
        return "not reachable"
    if mobile:
        return f"{r['top1']}/{r['n']} (cos {r['cosine']})"
    return f"{r['min_cosine']:.3f} (mean {r['mean_cosine']:.3f})"


def _table(m: dict, kinds: str, mobile: bool) -> list[str]:
    """One table: a row per MAC level, a column per variant (MACs as reached, OBS's)."""
    labels = [v[0] for v in VARIANTS if any(r["variant"] == v[0] for r in m["points"])]
    lines = ["", f"Regions: {kinds}", "", "| MACs | " + " | ".join(labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for level in m["levels"]:
        rows = [r for r in m["points"] if r["macs_target"] == level and r["kinds"] == kinds]
        if not rows:
            continue
        # MACs as OBS reached them (magnitude's rounding can land up to 0.02 lower)
        reached = [r["macs"] for r in rows if "macs" in r]
        obs = [r["macs"] for r in rows if "macs" in r and r["variant"].startswith("OBS")]
        macs = (obs or reached or [None])[0]
        cells = [f"{macs:.2f}x" if macs else f"{level}x"]
        for label in labels:
            r = next((r for r in rows if r["variant"] == label), None)
            cells.append(_cell(r, mobile) if r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(info: dict[str, Any]) -> str:
    lines = [
        "# Structured pruning (`--prune macs=X`): quality against MACs",
        "",
        f"`python -m bench.bench_prune_structured` on {info['machine'].get('cpu', '?')}; "
        f"damp {info['damp']}; load average {info['load']} -> {info['load_end']}.",
    ]
    for name, m in info["models"].items():
        mobile = name in CNNS
        what = "top-1 agreement with fp32" if mobile else "min cosine of the embedding"
        lines += ["", f"## {name}: {what} ({m['calibration']} calibration, {m['scored']} scored)"]
        for kinds in m["kinds"]:
            lines += _table(m, kinds, mobile)
        t = m.get("time")
        if t:
            tt = t["timing"]
            lines += [
                "",
                f"Speed at {t['ratio']:.2f}x MACs (`--prune macs={t['macs']}`, 2 threads, "
                f"{timing_protocol(tt)}): {dense_vs_pruned(tt)} (median of the per-round "
                f"ratios {tt['pairwise_speedup_median']}x; load {tt['load'][0]} -> "
                f"{tt['load'][1]}).",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,minilm")
    ap.add_argument("--damp", type=float, default=1.0)
    ap.add_argument("--time", type=float, default=None, help="compile and time at these MACs")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--levels", default=None, help="MAC levels (default: the model's)")
    ap.add_argument("--variants", default=None, help="variant numbers, e.g. 0,3")
    ap.add_argument("--role", default="evaluation", choices=["evaluation", "validation"])
    ap.add_argument("--stem", default="prune_structured")
    args = ap.parse_args(argv)
    info: dict[str, Any] = {"damp": args.damp, "role": args.role, "load": _load(), "models": {}}
    variants = VARIANTS
    if args.variants:
        variants = tuple(VARIANTS[int(i)] for i in args.variants.split(","))
    for name in args.models.split(","):
        s = Setup(name, args.role)
        levels = [float(v) for v in args.levels.split(",")] if args.levels else LEVELS[name]
        m = {"calibration": len(s.calib), "scored": len(s.eval), "levels": list(levels)}
        m["kinds"] = list(KINDS[name])
        m["points"] = [
            _point_or_error(s, lv, v, args.damp, kinds)
            for kinds in KINDS[name]
            for lv in levels
            for v in variants
        ]
        if args.time is not None:
            m["time"] = timed(s, args.time, args.damp, args.runs)
        info["models"][name] = m
    return finish(info, args.stem, markdown)


if __name__ == "__main__":
    sys.exit(main())
