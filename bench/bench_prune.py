"""Block-sparse compilation, side by side: graphopt's sparse kernels against its dense ones,
onnxruntime and DeepSparse.

    python -m bench.bench_prune [--part kernels|model|all] [--rounds N] [--runs N]
                                [--process-rounds N] [--no-spin] [--deepsparse-python PATH]

Kernels (bench/prune_kernels.py): MobileNetV2's 1x1 convs and classifier, MiniLM's matmuls,
dense vs block-sparse at 50/70/90% (16x1 blocks), interleaved in one process; wall clock and
process CPU time.

Whole model: MobileNetV2 with its 1x1 convs and classifier pruned by block magnitude to 70%
(16x1 blocks; bench/prune_magnitude.py), compiled by graphopt (-O2, x86: `sparsify` picks the
sparse kernels) and beside it the original dense model and the pruned model with dense kernels
(`sparse=false`). Outputs checked (sparse vs dense kernels on the same zeros); sizes of the
libraries and of the weights they store. Timing: one runtime per process (bench/prune_worker.py),
processes alternated A B C .. C B A for `--process-rounds` rounds, each warm-up then `--runs`
runs; medians over all runs, and the median and spread of the per-round ratios. Idle threads
spin as deployed (graphopt's bounded spin, onnxruntime the same); `--no-spin` makes them sleep
at once, for CPU time that is the work done (each parallel kernel then pays a worker wake-up,
the same in every build, which narrows the ratios). onnxruntime
runs the same two ONNX files; DeepSparse 1.8.0 too when `--deepsparse-python` names a Python
with it installed (it needs its own virtual environment). Writes bench/results/prune.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import prune_kernels
from bench.prune_magnitude import prune_model, weight_bytes
from bench.writing import write_results
from graphopt import env

env.configure_for_benchmarks(spinning=False)

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SPARSITY = 0.7


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def compile_models(work: Path, threads: int) -> dict[str, Any]:
    """The three graphopt builds and the pruned ONNX file; sizes and the sparsify stats."""
    import graphopt
    from bench.models.export import export

    src = export("mobilenet_v2")
    pruned = work / "mobilenet_v2_pruned70.onnx"
    layers = prune_model(src, pruned, SPARSITY, block=16)
    opts = {"num_cores": str(threads)}
    builds = {
        "graphopt_dense_model": (src, opts),
        "graphopt_pruned_dense_kernels": (pruned, {**opts, "sparse": "false"}),
        "graphopt_pruned_sparse": (pruned, opts),
    }
    info: dict[str, Any] = {
        "layers_pruned": layers,
        "onnx": {"dense": str(src), "pruned": str(pruned)},
    }
    for name, (path, target_opts) in builds.items():
        _say(f"[model] compiling {name}")
        start = time.perf_counter()
        art = graphopt.compile(path, work / name, opt_level=2, target_options=target_opts)
        info[name] = {
            "compile_s": round(time.perf_counter() - start, 1),
            "library_bytes": (work / name / "model.so").stat().st_size,
            "sparsify": _pass_stats(art.manifest, "sparsify"),
            "dir": str(work / name),
        }
    dense_w = weight_bytes(src)
    stats = info["graphopt_pruned_sparse"]["sparsify"] or {}
    stored = dense_w - stats.get("weight_bytes_dense", 0) + stats.get("weight_bytes_sparse", 0)
    info["weights_bytes"] = {"dense": dense_w, "sparse_stored": stored}
    info["weights_ratio"] = round(stored / dense_w, 3)
    info["library_ratio"] = round(
        info["graphopt_pruned_sparse"]["library_bytes"]
        / info["graphopt_dense_model"]["library_bytes"],
        3,
    )
    info["check"] = _check(work)
    return info


def _pass_stats(manifest: dict, name: str) -> dict | None:
    for entry in manifest["report"]["passes"]:
        if entry["pass"] == name:
            return entry["stats"]
    return None


def _check(work: Path) -> dict[str, float]:
    """Sparse vs dense kernels on the same zeros, and vs onnxruntime on the pruned file."""
    import graphopt
    from graphopt.reference import ort_session

    feed = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    outs = {}
    for name in ("graphopt_pruned_dense_kernels", "graphopt_pruned_sparse"):
        art = graphopt.load(work / name)
        outs[name] = next(iter(art.run({art.inputs[0].name: feed}).values()))
    session = ort_session(work / "mobilenet_v2_pruned70.onnx")
    ort = session.run(None, {session.get_inputs()[0].name: feed})[0]
    sparse = outs["graphopt_pruned_sparse"]
    return {
        "max_abs_sparse_vs_dense_kernels": float(
            np.abs(sparse - outs["graphopt_pruned_dense_kernels"]).max()
        ),
        "max_abs_sparse_vs_onnxruntime": float(np.abs(sparse - ort).max()),
        "output_scale": float(np.abs(ort).max()),
    }


def contestants(info: dict, deepsparse_python: str | None) -> dict[str, tuple[str, str, str]]:
    """name -> (python, runtime, model) of every process-timed contestant."""
    py = sys.executable
    dense_onnx, pruned_onnx = info["onnx"]["dense"], info["onnx"]["pruned"]
    out = {
        "graphopt_dense_model": (py, "graphopt", info["graphopt_dense_model"]["dir"]),
        "graphopt_pruned_sparse": (py, "graphopt", info["graphopt_pruned_sparse"]["dir"]),
        "onnxruntime_dense_model": (py, "onnxruntime", dense_onnx),
        "onnxruntime_pruned": (py, "onnxruntime", pruned_onnx),
    }
    if deepsparse_python:
        out["deepsparse_dense_model"] = (deepsparse_python, "deepsparse", dense_onnx)
        out["deepsparse_pruned"] = (deepsparse_python, "deepsparse", pruned_onnx)
    return out


def _one_process(
    python: str, runtime: str, model: str, runs: int, threads: int, spin: bool, feed: str = ""
) -> dict:
    cmd = [python, "-m", "bench.prune_worker", runtime, model, str(runs), "10", str(threads)]
    cmd += ["spin" if spin else "nospin", *([feed] if feed else [])]
    # From the user's environment: this process does not spin (its kernel timings), the
    # workers spin unless told not to (`nospin`).
    environ = {**env.user_environment(), "TVM_NUM_THREADS": str(threads)}
    environ["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_processes(
    procs: dict, rounds: int, runs: int, threads: int, spin: bool, feed: str = ""
) -> dict[str, Any]:
    """Alternate one process per contestant (A B C .. C B A ..); pooled medians and per-round
    medians of wall and CPU time. `feed`: an .npz of named inputs (default: a random image)."""
    names = list(procs)
    pooled = {n: {"ms": [], "cpu_ms": []} for n in names}
    per_round = {n: {"ms": [], "cpu_ms": []} for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            _say(f"[model] round {r + 1}/{rounds}: {name} (load {_load()})")
            got = _one_process(*procs[name], runs, threads, spin, feed)
            for key in ("ms", "cpu_ms"):
                pooled[name][key] += got[key]
                per_round[name][key].append(float(np.median(got[key])))
    return {
        n: {
            **{f"median_{k}": round(float(np.median(pooled[n][k])), 3) for k in ("ms", "cpu_ms")},
            **{
                f"round_medians_{k}": [round(v, 3) for v in per_round[n][k]]
                for k in ("ms", "cpu_ms")
            },
        }
        for n in names
    }


def ratios(timing: dict, base: str, other: str, key: str = "ms") -> dict[str, float]:
    """base / other per round (speed-up of `other`): median, min, max."""
    pairs = [
        a / b
        for a, b in zip(timing[base][f"round_medians_{key}"], timing[other][f"round_medians_{key}"])
    ]
    return {
        "median": round(float(np.median(pairs)), 2),
        "min": round(min(pairs), 2),
        "max": round(max(pairs), 2),
    }


def bench_model(args, work: Path) -> dict[str, Any]:
    info = compile_models(work, args.threads)
    _say(f"[model] checks: {info['check']}")
    procs = contestants(info, args.deepsparse_python)
    info["load_before"] = _load()
    info["spinning"] = args.spin
    info["timing"] = time_processes(procs, args.process_rounds, args.runs, args.threads, args.spin)
    info["load_after"] = _load()
    t = info["timing"]
    for key in ("ms", "cpu_ms"):
        for base in ("graphopt_dense_model", "onnxruntime_pruned", "deepsparse_pruned"):
            if base in t:
                info[f"speedup_vs_{base}_{key}"] = ratios(t, base, "graphopt_pruned_sparse", key)
    return info


def model_markdown(info: dict[str, Any]) -> str:
    from graphopt.tables import format_table

    t = info["timing"]
    base = t["graphopt_dense_model"]
    head = ["runtime / model", "wall ms", "speed-up", "CPU ms", "speed-up", "wall per round"]
    rows = [
        [
            name,
            f"{v['median_ms']:.2f}",
            f"{base['median_ms'] / v['median_ms']:.2f}x",
            f"{v['median_cpu_ms']:.2f}",
            f"{base['median_cpu_ms'] / v['median_cpu_ms']:.2f}x",
            " ".join(f"{x:.1f}" for x in v["round_medians_ms"]),
        ]
        for name, v in t.items()
    ]
    w = info["weights_bytes"]
    lib = [info[k]["library_bytes"] for k in ("graphopt_dense_model", "graphopt_pruned_sparse")]
    sizes = format_table(
        ["", "dense model", "70% block-sparse", "ratio"],
        [
            ["weights (MB)", _mb(w["dense"]), _mb(w["sparse_stored"]), f"{info['weights_ratio']}x"],
            ["model.so (MB)", _mb(lib[0]), _mb(lib[1]), f"{info['library_ratio']}x"],
        ],
    )
    per_round = "; ".join(
        f"{label}: {v['median']}x (min {v['min']}, max {v['max']})"
        for label, v in (
            ("wall", info["speedup_vs_graphopt_dense_model_ms"]),
            ("CPU", info["speedup_vs_graphopt_dense_model_cpu_ms"]),
        )
    )
    lines = [
        format_table(head, rows),
        "",
        f"Idle threads {'spin as deployed' if info.get('spinning', True) else 'sleep at once'}. "
        "Speed-up: over graphopt's dense model (medians of all runs). Per round, the sparse "
        f"build over the dense model: {per_round}. Load average before / after: "
        f"{info['load_before']} / {info['load_after']}.",
        "",
        sizes,
        "",
        "Checks: " + ", ".join(f"{k} {v:.3g}" for k, v in info["check"].items()),
    ]
    return "\n".join(lines) + "\n"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _versions(deepsparse_python: str | None) -> dict[str, str]:
    from graphopt.machine import machine_info

    out = dict(machine_info()["versions"])
    if deepsparse_python:
        probe = [deepsparse_python, "-c", "import deepsparse; print(deepsparse.__version__)"]
        done = subprocess.run(probe, capture_output=True, text=True)
        out["deepsparse"] = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else "?"
    return out


def main(argv: list[str] | None = None) -> int:
    from graphopt.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("kernels", "model", "all"), default="all")
    ap.add_argument("--rounds", type=int, default=21, help="interleaved kernel samples")
    ap.add_argument("--runs", type=int, default=60, help="timed runs per model process")
    ap.add_argument("--process-rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--spin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whole model: idle threads spin as deployed (--no-spin: they sleep, for CPU time)",
    )
    ap.add_argument("--deepsparse-python", default=None)
    ap.add_argument("--stem", default=None, help="results file stem (default: prune[_part])")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"machine": machine_info(), "threads": args.threads}
    report["machine"]["versions"] = _versions(args.deepsparse_python)
    text = "# Block-sparse compilation (bench/bench_prune.py)\n\n"
    if args.part in ("kernels", "all"):
        _say("[kernels] dense vs block-sparse layers")
        report["kernels"] = [
            prune_kernels.bench_layer(layer, args.rounds, args.threads, _say)
            for layer in prune_kernels.LAYERS
        ]
        kern = report["kernels"]
        text += (
            "## Kernels (us per call, speed-up over dense)\n\nWall clock, 2 threads:\n\n"
            + prune_kernels.markdown(kern, "wall")
            + "\n\nProcess CPU time, 2 threads:\n\n"
            + prune_kernels.markdown(kern, "cpu")
            + "\n\n"
        )
    if args.part in ("model", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            report["model"] = bench_model(args, Path(tmp))
        text += (
            "## MobileNetV2, 70% 16x1-block sparse 1x1 convs and classifier\n\n"
            + model_markdown(report["model"])
        )
    stem = args.stem or ("prune" if args.part == "all" else f"prune_{args.part}")
    finish(report, text, stem, args.threads)
    return 0


def finish(report: dict, text: str, stem: str, threads: int) -> None:
    """The machine and versions under the text; results written (json and md) and shown."""
    m = report["machine"]
    text += (
        f"\nMachine: {m['cpu']} ({m['llvm_cpu']}), {threads} threads; versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".\n"
    )
    write_results(RESULTS, stem, report, text)
    _say(text)


if __name__ == "__main__":
    sys.exit(main())
