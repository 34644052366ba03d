"""Post-training pruning on MobileNetV2: top-1 agreement with fp32 on photos calibration never
saw, magnitude against SparseGPT, the curve over levels, and block-sparse speed.

    python -m bench.bench_prune_accuracy [--levels 0.1,0.2,...] [--role evaluation|validation]
                                         [--damp 0.01] [--block-level 0.7] [--runs N]

Calibration: the 32 calibration crops of bench/models/inputs.py (8 photos); scores: the 64
evaluation crops (8 other photos), or the validation crops (6 more photos) for choosing
settings. The model is imported and -O2'd once; each layer's Hessian and mean input come from
one pass over the calibration crops (`compress/int4/hessian.py`, what `compile --prune` uses),
and every (method, level) point runs the same numpy pruning code as `compile --prune` through
one build with the weights as inputs (`compress/prune/probe.py`). Pruned: every 1x1 conv and
the classifier (36 layers); depthwise and the first 3x3 conv stay dense.

Block 16x1 (what the x86 sparse kernels take): agreement at --block-level by magnitude and
one-shot SparseGPT (both with bias correction) through the probe, then `--prune block=LEVEL`
with its defaults (sequential SparseGPT) compiled through `graphopt.compile`, the real path,
scored as an artifact and timed against the dense model's artifact, alternated in one process
(medians of --runs calls each, 2 threads).
Writes bench/results/prune_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.writing import write_results
from graphopt import env

env.configure_for_benchmarks(spinning=False)

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def finish(info: dict, stem: str, markdown) -> int:
    """Record the load at the end and the machine, write results/<stem>.json and .md (the
    text from `markdown(info)`), print the text; the exit status."""
    from graphopt.machine import machine_info

    info["load_end"] = _load()
    info["machine"] = machine_info()
    text = markdown(info)
    write_results(RESULTS, stem, info, text)
    print(text)
    return 0


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class Setup:
    """The -O2 graph, its prunable layers, calibration statistics, the probe and the fp32
    outputs on the scored crops."""

    def __init__(self, role: str) -> None:
        from bench.bench_int8 import calibration_images
        from bench.models.export import export
        from bench.models.inputs import split_crops
        from graphopt.compress.common.layers import find_layers
        from graphopt.compress.int4.hessian import hessians
        from graphopt.compress.prune.layers import prunable
        from graphopt.compress.prune.probe import WeightProbe
        from graphopt.frontend import import_onnx
        from graphopt.pipeline import instantiate, parse_pipeline, run_passes
        from graphopt.target_infra import host_target

        self.src = export("mobilenet_v2")
        imported = import_onnx(self.src)
        self.input = imported.inputs[0].name
        self.mod = run_passes(imported.mod, instantiate(parse_pipeline("O2")))
        self.layers = [ly for ly in find_layers(self.mod["main"]) if prunable(ly)]
        names = [ly.name for ly in self.layers]
        self.calib = calibration_images()
        feeds = [{self.input: x} for x in self.calib]
        sums: dict[str, np.ndarray] = {}
        target = host_target()
        hs, rows = hessians(self.mod, feeds, names, target, _say, sums=sums)
        self.h = {n: hs[n] / rows[n] for n in names}
        self.mean = {n: sums[n] / rows[n] for n in names}
        _say("building the probe (weights as inputs)")
        self.probe = WeightProbe(self.mod, names, target)
        self.eval = [x for _, x in split_crops(role)]
        self.ref = [self.probe.run([x], {})[0] for x in self.eval]

    def prune(self, spec, method: str, damp: float, bias: bool) -> tuple[dict, dict]:
        """({layer: pruned weight, stored layout}, {layer: bias correction})."""
        from graphopt.compress.prune.layers import as_kn, from_kn
        from graphopt.compress.prune.masks import magnitude
        from graphopt.compress.prune.sparsegpt import prune_sparsegpt

        weights, shifts = {}, {}
        for ly in self.layers:
            w = as_kn(ly).astype(np.float32)
            if method == "sparsegpt":  # with bias correction: centered, as --prune does
                m = self.mean[ly.name]
                h = self.h[ly.name] - (np.outer(m, m) if bias else 0.0)
                new = prune_sparsegpt(w, h, spec, damp)
            else:
                new = magnitude(w, spec)
            weights[ly.name] = from_kn(ly, new)
            if bias:
                shifts[ly.name] = self.mean[ly.name] @ (new - w)
        return weights, shifts

    def score(self, weights: dict, shifts: dict) -> dict[str, Any]:
        got = [self.probe.run([x], weights, shifts)[0] for x in self.eval]
        return quality(self.ref, got)


def quality(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    """Top-1 agreement with fp32 (strict, and counting fp32 near-ties as the budget does),
    top-5 containment of the fp32 top-1, mean cosine of the logits."""
    from graphopt.compress.common.metrics import cosines, top1_agrees

    r = np.concatenate(ref)
    g = np.concatenate(got)
    top5 = np.argsort(-g, axis=1)[:, :5]
    return {
        "top1": int(np.sum(r.argmax(1) == g.argmax(1))),
        "top1_tie_aware": int(np.sum(top1_agrees(ref, got))),
        "top5": int(np.sum(top5 == r.argmax(1)[:, None])),
        "cosine": round(float(cosines(ref, got).mean()), 4),
        "n": len(r),
    }


def curve(s: Setup, levels, damp: float) -> list[dict]:
    """Unstructured agreement per level: magnitude, SparseGPT, each without / with bias
    correction."""
    from graphopt.compress.prune.spec import PruneSpec

    rows = []
    for level in levels:
        spec = PruneSpec("unstructured", level)
        for method in ("magnitude", "sparsegpt"):
            for bias in (False, True):
                start = time.perf_counter()
                q = s.score(*s.prune(spec, method, damp, bias))
                row = {
                    "pattern": "unstructured",
                    "level": level,
                    "method": method,
                    "bias_correction": bias,
                    **q,
                }
                row["seconds"] = round(time.perf_counter() - start, 1)
                rows.append(row)
                _say(
                    f"[curve] {level:.0%} {method} bias={bias}: top-1 {q['top1']}/{q['n']}, "
                    f"cosine {q['cosine']} (load {_load()})"
                )
    return rows


def sequential_point(s: Setup, spec, damp: float, pull: float, bias: bool = True) -> dict:
    """Sequential SparseGPT with the refit toward the dense outputs (what --prune runs)."""
    from graphopt.compress.prune.sequential import sequential_prune
    from graphopt.target_infra import host_target

    feeds = [{s.input: x} for x in s.calib]
    start = time.perf_counter()
    r = sequential_prune(s.mod, s.layers, feeds, spec, damp, pull, bias, host_target(), _say)
    q = s.score(r.weights, r.corrections)
    q["seconds"] = round(time.perf_counter() - start, 1)
    return q


def compiled_block(s: Setup, work: Path, level: float, runs: int) -> dict[str, Any]:
    """`--prune block=LEVEL` (SparseGPT, sequential) through graphopt.compile, its agreement on
    the scored crops, and its speed against the dense model's artifact."""
    import graphopt
    from graphopt.compress.prune.method import Prune, PruneOptions
    from graphopt.compress.prune.spec import PruneSpec

    calib = work / "calib.npz"
    np.savez(calib, x=np.concatenate(s.calib))
    opts = {"num_cores": "2"}
    start = time.perf_counter()
    method = Prune(PruneOptions(PruneSpec("block", level, block=16), calibration=str(calib)))
    pruned = graphopt.compile(
        s.src, work / "pruned", target_options=opts, compression=[method], progress=_say
    )
    compile_s = round(time.perf_counter() - start, 1)
    dense = graphopt.compile(s.src, work / "dense", target_options=opts)
    feed = {pruned.inputs[0].name: s.eval[0]}
    got = [next(iter(pruned.run({pruned.inputs[0].name: x}).values())) for x in s.eval]
    sizes = {n: (work / n / "model.so").stat().st_size for n in ("dense", "pruned")}
    stats = next(e["stats"] for e in pruned.manifest["report"]["passes"] if e["pass"] == "sparsify")
    return {
        "level": level,
        "compile_s": compile_s,
        "quality": quality(s.ref, got),
        "sparsify": stats,
        "library_bytes": sizes,
        "timing": alternate(dense, pruned, feed, runs),
    }


# Alternated worker processes per timing (each warms up for a second, then `runs` calls).
TIMING_ROUNDS = 6


def alternate(dense, pruned, feed: dict, runs: int) -> dict[str, Any]:
    """The two artifacts timed as deployed: one process each (bench/prune_worker.py, idle
    threads spinning; this process does not spin, for its calibration runs), alternated over
    TIMING_ROUNDS rounds of `runs` calls; medians of all calls and of the per-round ratios."""
    from bench.bench_prune import time_processes

    procs = {name: (sys.executable, "graphopt", str(art.directory))
             for name, art in (("dense", dense), ("pruned", pruned))}  # fmt: skip
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        feed_file = str(Path(tmp) / "feed.npz")
        np.savez(feed_file, **feed)
        t = time_processes(procs, TIMING_ROUNDS, runs, 2, True, feed_file)
    med = {k: t[k]["median_ms"] for k in ("dense", "pruned")}
    rounds = np.array(t["dense"]["round_medians_ms"]) / np.array(t["pruned"]["round_medians_ms"])
    return {
        "runs": runs,
        "rounds": TIMING_ROUNDS,
        "median_ms": med,
        "speedup": round(med["dense"] / med["pruned"], 3),
        "pairwise_speedup_median": round(float(np.median(rounds)), 3),
        "load": [load_before, _load()],
    }


def markdown(info: dict[str, Any]) -> str:
    m = info["machine"]
    lines = [
        "# Post-training pruning: MobileNetV2",
        "",
        f"`python -m bench.bench_prune_accuracy` on {m.get('cpu', '?')}, "
        f"scored on the {info['role']} crops ({info['scored']} crops of photos calibration never "
        f"saw), calibrated on {info['calibration']} crops; load average {info['load']}.",
        f"Pruned: {info['layers']} layers (1x1 convs and the classifier); damp {info['damp']}, "
        f"pull {info['pull']}.",
        "",
        "## Unstructured: top-1 agreement with fp32",
        "",
        "| level | magnitude | magnitude + bias corr. | SparseGPT | SparseGPT + bias corr. "
        "| sequential SparseGPT + refit (`--prune`) |",
        "|---|---|---|---|---|---|",
    ]
    n = info["scored"]
    for level in info["levels"]:
        cells = [f"{level:.0%}"]
        for method, bias in (
            ("magnitude", False),
            ("magnitude", True),
            ("sparsegpt", False),
            ("sparsegpt", True),
        ):
            r = next(
                r
                for r in info["curve"]
                if r["level"] == level and r["method"] == method and r["bias_correction"] == bias
            )
            cells.append(f"{r['top1']}/{n} (top-5 {r['top5']}, cos {r['cosine']})")
        seq = info["sequential"].get(f"{level}")
        cells.append(
            f"**{seq['top1']}/{n}** (top-5 {seq['top5']}, cos {seq['cosine']})" if seq else "-"
        )
        lines.append("| " + " | ".join(cells) + " |")
    b = info.get("block")
    if b:
        lines += ["", f"## Block 16x1 at {b['level']:.0%} (x86 block-sparse kernels)", ""]
        lines += ["| method | top-1 | top-5 | cosine |", "|---|---|---|---|"]
        for name, q in b["probe"].items():
            lines.append(f"| {name} | {q['top1']}/{n} | {q['top5']}/{n} | {q['cosine']} |")
        c = b.get("compiled")
        if c:
            t = c["timing"]
            q = c["quality"]
            lines += [
                "",
                f"Compiled with `--prune block={b['level']}` (SparseGPT, sequential; compile "
                f"{c['compile_s']} s): top-1 {q['top1']}/{n}; {c['sparsify']['layers_sparse']} "
                f"layers block-sparse, their weights {c['sparsify']['weight_bytes_dense']} B -> "
                f"{c['sparsify']['weight_bytes_sparse']} B; model.so "
                f"{c['library_bytes']['dense']} B -> {c['library_bytes']['pruned']} B.",
                f"Speed, 2 threads, {timing_protocol(t)}: {dense_vs_pruned(t)} "
                f"(median of the per-round ratios {t['pairwise_speedup_median']}x; "
                f"load {t['load'][0]} -> {t['load'][1]}).",
            ]
    return "\n".join(lines) + "\n"


def timing_protocol(t: dict) -> str:
    """How a timing was taken (results from before the worker processes have no rounds)."""
    if "rounds" not in t:
        return f"{t['runs']} alternated calls each in one process"
    return f"one process each, {t['rounds']} alternated rounds of {t['runs']} calls"


def dense_vs_pruned(t: dict) -> str:
    """The timing's medians and speed-up as the results files print them (also used by
    bench_prune_structured)."""
    return (
        f"dense {t['median_ms']['dense']} ms, pruned {t['median_ms']['pruned']} ms: "
        f"**{t['speedup']}x**"
    )


def main(argv: list[str] | None = None) -> int:

    from graphopt.compress.prune.spec import PruneSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--sequential-levels", default="0.3,0.5")
    ap.add_argument("--role", default="evaluation", choices=["evaluation", "validation"])
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--pull", type=float, default=0.1)
    ap.add_argument("--block-level", type=float, default=0.7)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled block model")
    ap.add_argument("--stem", default="prune_accuracy")
    args = ap.parse_args(argv)
    levels = [float(v) for v in args.levels.split(",") if v]
    s = Setup(args.role)
    info: dict[str, Any] = {
        "role": args.role,
        "scored": len(s.eval),
        "calibration": len(s.calib),
        "layers": len(s.layers),
        "damp": args.damp,
        "pull": args.pull,
        "levels": levels,
        "load": _load(),
    }
    info["curve"] = curve(s, levels, args.damp)
    info["sequential"] = {}
    for level in [float(v) for v in args.sequential_levels.split(",") if v]:
        q = sequential_point(s, PruneSpec("unstructured", level), args.damp, args.pull)
        info["sequential"][f"{level}"] = q
        _say(f"[sequential] {level:.0%}: top-1 {q['top1']}/{q['n']} (load {_load()})")
    spec = PruneSpec("block", args.block_level, block=16)
    probe = {"magnitude + bias corr.": s.score(*s.prune(spec, "magnitude", args.damp, True))}
    probe["SparseGPT + bias corr."] = s.score(*s.prune(spec, "sparsegpt", args.damp, True))
    _say(f"[block] {probe} (load {_load()})")
    info["block"] = {"level": args.block_level, "probe": probe}
    if not args.no_compile:
        with tempfile.TemporaryDirectory(prefix="prune-acc-") as tmp:
            c = compiled_block(s, Path(tmp), args.block_level, args.runs)
            info["block"]["compiled"] = c
            _say(f"[block compiled] {c['quality']} {c['timing']}")
    return finish(info, args.stem, markdown)


if __name__ == "__main__":
    sys.exit(main())
