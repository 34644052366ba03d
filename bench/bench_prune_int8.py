"""Block-sparse int8, side by side: graphopt's sparse int8 kernels against its dense int8 ones,
its fp32 sparse kernels and onnxruntime's int8.

    python -m bench.bench_prune_int8 [--part kernels|model|all] [--rounds N] [--runs N]
                                     [--process-rounds N] [--no-spin]

Kernels (bench/prune_int8_kernels.py): MobileNetV2's 1x1 convs and classifier, MiniLM's
matmuls, the dense int8 kernel vs the block-sparse one at 50/70/90% zero blocks (16x4 on
VNNI), outputs equal bit for bit, interleaved in one process.

Whole models (`--models`): MobileNetV2 with its 1x1 convs and classifier, and MiniLM with its
matmuls, pruned by block magnitude to 70% zero 16x4 blocks (bench/prune_magnitude.py;
accuracy is not the point), quantized to int8 by graphopt as bench_int8 does (MobileNetV2
static from the calibration crops, MiniLM dynamic per token) and compiled at -O2; beside
them the original model in int8, the pruned model in int8 with dense kernels (`sparse=false`:
the outputs must be equal), the pruned model in fp32 (its fp32 sparse kernels) and
onnxruntime's int8 of the pruned file (quantize_static, QDQ, per channel; MiniLM:
quantize_dynamic). Timing as in bench_prune: one runtime per process (bench/prune_worker.py,
a random image or one sentence), processes alternated over `--process-rounds`,
medians of all runs and of the per-round ratios. Writes bench/results/prune_int8.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import prune_int8_kernels
from bench.bench_prune import (
    _load,
    _mb,
    _pass_stats,
    _say,
    finish,
    ratios,
    time_processes,
)
from bench.prune_kernels import LAYERS
from bench.prune_magnitude import prune_model
from graphopt import env

env.configure_for_benchmarks(spinning=False)

SPARSITY = 0.7
BASE = "graphopt_int8_dense_model"
SPARSE = "graphopt_int8_pruned_sparse"
DENSE_KERNELS = "graphopt_int8_pruned_dense_kernels"
FP32_SPARSE = "graphopt_fp32_pruned_sparse"
ORT = "onnxruntime_int8_pruned"


@dataclass(frozen=True)
class Case:
    """One whole-model comparison: the model, its int8 settings, onnxruntime's int8 and the
    input every runtime gets."""

    name: str  # bench/models/export.py name
    title: str

    def quant(self, work: Path):
        """graphopt's int8 options (as bench_int8 runs the model) and the calibration data."""
        from bench.bench_int8 import CALIB_SENTENCES, calibration_images
        from bench.models.inputs import tokenize
        from graphopt.compress.int8.flow import QuantOptions

        path = str(work / "calib.npz")
        if self.name == "minilm":
            cal = [tokenize(s) for s in CALIB_SENTENCES]
            np.savez(path, **{k: np.concatenate([c[k] for c in cal]) for k in cal[0]})
            return QuantOptions(path, mode="dynamic", granularity="row", metric="min_cosine")
        np.savez(path, input=np.concatenate(calibration_images()))
        return QuantOptions(path)

    def ort_int8(self, pruned: Path, work: Path) -> Path:
        from bench.bench_int8 import _ort_dynamic, _ort_static, calibration_images

        dest = work / "pruned_ort_int8.onnx"
        if self.name == "minilm":
            return _ort_dynamic(pruned, dest)
        return _ort_static(pruned, calibration_images(), dest)

    def feed(self, work: Path) -> str:
        """An .npz of the inputs ('' for the workers' default random image)."""
        if self.name != "minilm":
            return ""
        from bench.models.inputs import sentence_batch

        np.savez(work / "feed.npz", **sentence_batch(1)[0])
        return str(work / "feed.npz")


CASES = {
    "mobilenet_v2": Case("mobilenet_v2", "MobileNetV2 in int8, 70% 16x4-block sparse 1x1 convs "
                         "and classifier"),
    "minilm": Case("minilm", "all-MiniLM-L6-v2 in dynamic int8 (128 tokens), 70% 16x4-block "
                   "sparse matmuls"),
}  # fmt: skip


def compile_models(case: Case, work: Path, threads: int) -> dict[str, Any]:
    """The graphopt builds, onnxruntime's int8 file, the sizes and the checks."""
    import graphopt
    from bench.models.export import export

    src = export(case.name)
    pruned = work / f"{case.name}_pruned70_16x4.onnx"
    layers = prune_model(src, pruned, SPARSITY, block=16, depth=4)
    quant = case.quant(work)
    opts = {"num_cores": str(threads)}
    builds = {
        BASE: (src, opts, quant),
        SPARSE: (pruned, opts, quant),
        DENSE_KERNELS: (pruned, {**opts, "sparse": "false"}, quant),
        FP32_SPARSE: (pruned, opts, None),
    }
    info: dict[str, Any] = {"model": case.name, "layers_pruned": layers}
    for name, (path, target_opts, q) in builds.items():
        _say(f"[{case.name}] compiling {name}")
        start = time.perf_counter()
        art = graphopt.compile(
            path, work / name, opt_level=2, target_options=target_opts, quantization=q
        )
        info[name] = {
            "compile_s": round(time.perf_counter() - start, 1),
            "library_bytes": (work / name / "model.so").stat().st_size,
            "materialize_int8": _pass_stats(art.manifest, "materialize-int8"),
            "sparsify": _pass_stats(art.manifest, "sparsify"),
            "dir": str(work / name),
        }
    _say(f"[{case.name}] onnxruntime int8 of the pruned file")
    info["onnx"] = {"pruned": str(pruned), "pruned_int8": str(case.ort_int8(pruned, work))}
    info["feed"] = case.feed(work)
    fp32_sparse = (info[SPARSE]["sparsify"] or {}).get("layers_sparse", 0)
    info["check"] = _check(work, info["feed"], fp32_sparse)
    return info


def _check(work: Path, feed_file: str, fp32_sparse_layers: int) -> dict[str, float]:
    """Sparse vs dense int8 kernels on the same zeros: equal, bit for bit, unless layers left
    in fp32 took fp32 sparse kernels as well (their sums round differently: 1e-5 relative)."""
    import graphopt

    outs = {}
    for name in (SPARSE, DENSE_KERNELS):
        art = graphopt.load(work / name)
        if feed_file:
            feed = dict(np.load(feed_file))
        else:
            image = np.random.default_rng(0).standard_normal((1, 3, 224, 224))
            feed = {art.inputs[0].name: image.astype(np.float32)}
        outs[name] = next(iter(art.run(feed).values()))
    diff = float(np.abs(outs[SPARSE] - outs[DENSE_KERNELS]).max())
    scale = float(np.abs(outs[DENSE_KERNELS]).max())
    if diff > (1e-5 * scale if fp32_sparse_layers else 0.0):
        raise RuntimeError(f"sparse int8 kernels differ from the dense ones by {diff}")
    return {"max_abs_sparse_vs_dense_kernels": diff, "output_scale": scale}


def bench_model(case: Case, args, work: Path) -> dict[str, Any]:
    info = compile_models(case, work, args.threads)
    py = sys.executable
    procs = {
        BASE: (py, "graphopt", info[BASE]["dir"]),
        SPARSE: (py, "graphopt", info[SPARSE]["dir"]),
        FP32_SPARSE: (py, "graphopt", info[FP32_SPARSE]["dir"]),
        ORT: (py, "onnxruntime", info["onnx"]["pruned_int8"]),
    }
    info["load_before"] = _load()
    info["spinning"] = args.spin
    info["timing"] = time_processes(
        procs, args.process_rounds, args.runs, args.threads, args.spin, info["feed"]
    )
    info["load_after"] = _load()
    for base in (BASE, FP32_SPARSE, ORT):
        info[f"speedup_vs_{base}"] = ratios(info["timing"], base, SPARSE)
    return info


def model_markdown(info: dict[str, Any]) -> str:
    from graphopt.tables import format_table

    t = info["timing"]
    base = t[BASE]
    head = ["runtime / model", "wall ms", "vs int8 dense model", "wall per round"]
    rows = [
        [
            name,
            f"{v['median_ms']:.2f}",
            f"{base['median_ms'] / v['median_ms']:.2f}x",
            " ".join(f"{x:.2f}" for x in v["round_medians_ms"]),
        ]
        for name, v in t.items()
    ]
    st = info[SPARSE]["materialize_int8"]
    per_round = "; ".join(
        f"over {b}: {v['median']}x (min {v['min']}, max {v['max']})"
        for b, v in ((b, info[f"speedup_vs_{b}"]) for b in (BASE, ORT))
    )
    lib = [info[k]["library_bytes"] for k in (BASE, SPARSE)]
    return (
        "\n".join(
            [
                format_table(head, rows),
                "",
                f"Idle threads {'spin as deployed' if info['spinning'] else 'sleep at once'}. "
                f"Per round, the sparse int8 build: {per_round}. Load average before / after: "
                f"{info['load_before']} / {info['load_after']}.",
                "",
                f"Sparse int8 layers: {st['layers_sparse']} (their int8 weights "
                f"{_mb(st['sparse_bytes_dense'])} MB -> {_mb(st['sparse_bytes_stored'])} MB, "
                f"values + one int32 index per 64 weights); model.so {_mb(lib[0])} MB -> "
                f"{_mb(lib[1])} MB. Checks: "
                + ", ".join(f"{k} {v:.3g}" for k, v in info["check"].items()),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    from bench.bench_prune import _versions
    from graphopt.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("kernels", "model", "all"), default="all")
    ap.add_argument(
        "--models", default="mobilenet_v2,minilm", help="whole models (mobilenet_v2, minilm)"
    )
    ap.add_argument("--rounds", type=int, default=21, help="interleaved kernel samples")
    ap.add_argument("--runs", type=int, default=60, help="timed runs per model process")
    ap.add_argument("--process-rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spin", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--stem", default=None, help="results file stem (default: prune_int8[_part])")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # the kernels' pool, started lazily
    report: dict[str, Any] = {"machine": machine_info(), "threads": args.threads}
    report["machine"]["versions"] = _versions(None)
    text = "# Block-sparse int8 (bench/bench_prune_int8.py)\n\n"
    if args.part in ("kernels", "all"):
        _say("[kernels] dense vs block-sparse int8 kernels")
        report["kernels"] = [
            prune_int8_kernels.bench_layer(layer, args.rounds, _say) for layer in LAYERS
        ]
        text += (
            "## Kernels (us per call, speed-up over the dense int8 kernel; wall clock)\n\n"
            + prune_int8_kernels.markdown(report["kernels"])
            + "\n\n"
        )
    if args.part in ("model", "all"):
        report["models"] = {}
        for name in args.models.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                report["models"][name] = bench_model(CASES[name], args, Path(tmp))
            text += f"## {CASES[name].title}\n\n" + model_markdown(report["models"][name]) + "\n"
    stem = args.stem or ("prune_int8" if args.part == "all" else f"prune_int8_{args.part}")
    finish(report, text, stem, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
