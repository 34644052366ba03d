"""Two checkouts of graphopt side by side: the same models compiled by each, timed alternately.

    python -m bench.bench_versions --a /path/to/old/.venv --b /path/to/new/.venv \
        [--models mobilenet_v2,efficientnet_lite0,minilm] [--configs fp32-O2,int8-O2,int8-O3]
        [--rounds 6] [--runs 50]

Each checkout's own `graphopt compile` builds every (model, config) and its own
`graphopt bench DIR --vs MODEL` times it against onnxruntime in a fresh process (interleaved
in that process, as `graphopt bench` does), in rounds A B B A ..., so both see the same machine
state. Reported: each side's median of per-round ratios to onnxruntime, and B / A from the
per-round medians. Answers "did this change make anything slower" with the noise visible.
int8 configs calibrate the CNNs on photos disjoint from the timing inputs
(bench.bench_int8.calibration_images) and run MiniLM in dynamic mode.
Writes bench/results/versions.json and versions.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.writing import write_results
from graphopt.machine import machine_info
from graphopt.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "fp32-O2": ["-O2"],
    "fp32-O3": ["-O3"],
    "int8-O2": ["-O2", "--quantize", "int8"],
    "int8-O3": ["-O3", "--quantize", "int8"],
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _calibration(model: str, work: Path) -> list[str]:
    """Flags for int8: static with disjoint calibration photos for CNNs, dynamic for MiniLM."""
    if model == "minilm":
        return ["--quant-mode", "dynamic", "--dynamic-granularity", "row"]
    from bench.bench_int8 import calibration_images

    path = work / "calib.npz"
    if not path.exists():
        np.savez(path, input=np.concatenate(calibration_images()))
    return ["--calibration", str(path)]


def _inputs(model: str, work: Path) -> Path:
    from bench.bench_models import real_inputs

    path = work / f"{model}-inputs.npz"
    if not path.exists():
        np.savez(path, **real_inputs(model, 1)[0])
    return path


def _compile(venv: Path, onnx_path: Path, out: Path, flags: list[str]) -> None:
    cmd = [str(venv / "bin" / "graphopt"), "compile", str(onnx_path), "-o", str(out), "-q"]
    subprocess.run([*cmd, *flags], check=True, stdout=subprocess.DEVNULL)


def _bench(venv: Path, art: Path, onnx_path: Path, inputs: Path, runs: int, out: Path) -> dict:
    cmd = [str(venv / "bin" / "graphopt"), "bench", str(art), "--vs", str(onnx_path)]
    cmd += ["--inputs", str(inputs), "--runs", str(runs), "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    return {
        "graphopt": _median_ms(data, "graphopt"),
        "onnxruntime": _median_ms(data, "onnxruntime"),
    }


def _median_ms(data: dict, who: str) -> float:
    return float(data["latency"][who]["median_ms"])


def measure(args, model: str, config: str, work: Path) -> dict:
    """Compile with both checkouts, then alternate their bench processes A B B A ..."""
    from bench.models.export import export

    onnx_path = Path(export(model))
    flags = list(CONFIGS[config])
    if "int8" in config:
        flags += _calibration(model, work)
    arts = {}
    for side in ("a", "b"):
        arts[side] = work / f"{model}-{config}-{side}"
        _say(f"{model} {config}: compiling with {side.upper()}")
        _compile(Path(getattr(args, side)), onnx_path, arts[side], flags)
    inputs = _inputs(model, work)
    rounds: dict[str, list[dict]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
            out = work / f"bench-{side}.json"
            venv = Path(getattr(args, side))
            rounds[side].append(_bench(venv, arts[side], onnx_path, inputs, args.runs, out))
        _say(f"{model} {config}: round {r + 1}/{args.rounds}")
    return {"model": model, "config": config, "rounds": rounds, **summary(rounds)}


def summary(rounds: dict[str, list[dict]]) -> dict:
    ratio = {s: [x["graphopt"] / x["onnxruntime"] for x in rounds[s]] for s in rounds}
    ms = {s: [x["graphopt"] for x in rounds[s]] for s in rounds}
    b_over_a = [b / a for a, b in zip(ms["a"], ms["b"])]
    return {
        "a_vs_ort": float(np.median(ratio["a"])),
        "b_vs_ort": float(np.median(ratio["b"])),
        "b_over_a": float(np.median(b_over_a)),
        "b_over_a_range": [float(min(b_over_a)), float(max(b_over_a))],
    }


def table(rows: list[dict]) -> str:
    body = [
        [
            r["model"],
            r["config"],
            f"{r['a_vs_ort']:.2f}x",
            f"{r['b_vs_ort']:.2f}x",
            f"{r['b_over_a']:.3f} ({r['b_over_a_range'][0]:.2f}-{r['b_over_a_range'][1]:.2f})",
        ]
        for r in rows
    ]
    header = ["model", "config", "A / onnxruntime", "B / onnxruntime", "B / A (range)"]
    return format_table(header, body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="venv of checkout A (the baseline)")
    parser.add_argument("--b", required=True, help="venv of checkout B (the change)")
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0,minilm")
    parser.add_argument("--configs", default="fp32-O2,int8-O2,int8-O3")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphopt-versions-") as tmp:
        for model in args.models.split(","):
            for config in args.configs.split(","):
                rows.append(measure(args, model, config, Path(tmp)))
                _say(table(rows[-1:]))
    text = table(rows)
    print(text)
    meta = {"a": args.a, "b": args.b, "rounds": args.rounds, "runs": args.runs}
    write_results(RESULTS, "versions", {"machine": machine_info(), **meta, "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
