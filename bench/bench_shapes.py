"""Symbolic input shapes, side by side: one graphopt build for every size (a range), a static
graphopt build per size, and onnxruntime, at each size.

    python -m bench.bench_shapes [--models minilm,mobilenet_v2] [--opt-levels 2,3] [--rounds N]
    python -m bench.bench_shapes --models minilm_int8,mobilenet_v2_int8 --out shapes_int8

MiniLM (all-MiniLM-L6-v2, exported with a symbolic sequence length) at 16/32/128/384 tokens,
compiled once with `--input-shape input_ids=1,1..512`; MobileNetV2 (symbolic batch) at batch
1 and 8, compiled once with `--input-shape input=1..8,3,224,224`; `mobilenet_v2_hw` (and `_int8`):
MobileNetV2 exported with a symbolic height and width, at 160x160 and 224x224, compiled once
with `--input-shape input=1,3,96..256,96..256`. Each static build pins the
same ONNX file to one size (`input_ids=1,128`). Builds at -O2 and -O3 (`--opt-levels`),
untuned. `minilm_int8`: the same MiniLM builds with dynamic per-row int8 (`--quantize int8
--quant-mode dynamic --dynamic-granularity row`); `mobilenet_v2_int8`: static int8
calibrated on the int8 bench's calibration crops; symbolic against static in both. Outputs
of both builds are checked against onnxruntime at every size. Timing: one runtime per process
(bench/shapes_worker.py), processes alternated A B C C B A for `--rounds` rounds, each warm-up
then `--runs` runs; medians over all runs, and the median of the per-round ratios. Writes
bench/results/shapes.{json,md} with the machine, versions and load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.shapes_worker import feeds
from bench.writing import write_results

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
CONTESTANTS = ("graphopt_dynamic", "graphopt_static", "onnxruntime")


@dataclass(frozen=True)
class Case:
    export: str  # bench/models/export.py name
    kind: str  # shapes_worker input kind
    input: str
    dynamic: str  # --input-shape dims of the one symbolic build
    static: str  # the same with {n} for a static build's size
    sizes: tuple[int, ...]
    int8: str = ""  # "dynamic" (per-row, no calibration data) | "static" (calibrated)


CASES = {
    "minilm": Case("minilm_dynamic", "text", "input_ids", "1,1..512", "1,{n}", (16, 32, 128, 384)),
    "minilm_int8": Case(
        "minilm_dynamic", "text", "input_ids", "1,1..512", "1,{n}", (16, 32, 128, 384), "dynamic"
    ),
    "mobilenet_v2_int8": Case(
        "mobilenet_v2_dynamic",
        "image",
        "input",
        "1..8,3,224,224",
        "{n},3,224,224",
        (1, 8),
        "static",
    ),
    "mobilenet_v2": Case(
        "mobilenet_v2_dynamic", "image", "input", "1..8,3,224,224", "{n},3,224,224", (1, 8)
    ),
    "mobilenet_v2_hw": Case(
        "mobilenet_v2_hw", "image_hw", "input", "1,3,96..256,96..256", "1,3,{n},{n}", (160, 224)
    ),
    "mobilenet_v2_hw_int8": Case(
        "mobilenet_v2_hw",
        "image_hw",
        "input",
        "1,3,96..256,96..256",
        "1,3,{n},{n}",
        (160, 224),
        "static",
    ),
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def compile_builds(name: str, case: Case, work: Path, level: int) -> dict[str, Any]:
    """The symbolic build and one static build per size at -O`level`; compile seconds."""
    import graphopt
    from bench.models.export import export
    from graphopt.frontend import parse_shape_arg

    onnx_path = export(case.export)
    builds: dict[str, Any] = {"onnx": str(onnx_path), "static": {}, "compile_s": {}}
    plan = [("dynamic", case.dynamic)] + [(n, case.static.format(n=n)) for n in case.sizes]
    for key, dims in plan:
        out = work / f"{name}-O{level}-{key}"
        _say(f"[{name}] compile -O{level} --input-shape {case.input}={dims} (load {_load()})")
        start = time.perf_counter()
        graphopt.compile(
            onnx_path,
            out,
            opt_level=level,
            input_shapes=dict([parse_shape_arg(f"{case.input}={dims}")]),
            compression=_compression(case, work, None if key == "dynamic" else key),
        )
        builds["compile_s"][str(key)] = round(time.perf_counter() - start, 1)
        if key == "dynamic":
            builds["dynamic"] = str(out)
        else:
            builds["static"][str(key)] = str(out)
    return builds


def _compression(case: Case, work: Path, size: int | None) -> list:
    """int8 settings of a build; a static image_hw build of `size` pixels calibrates on the
    calibration crops sampled down to its size (nearest pixels), the others at 224."""
    if not case.int8:
        return []
    from graphopt.compress.int8.flow import QuantOptions
    from graphopt.compress.int8.method import Int8

    if case.int8 == "dynamic":
        return [Int8(QuantOptions(mode="dynamic", granularity="row"))]
    from bench.bench_int8 import calibration_images

    side = size if case.kind == "image_hw" and size else 224
    cal = work / f"calibration{side}.npz"
    if not cal.exists():
        images = np.concatenate(calibration_images())
        pick = np.arange(side) * images.shape[-1] // side
        np.savez(cal, x=images[:, :, pick][:, :, :, pick])
    return [Int8(QuantOptions(calibration=str(cal)))]


def check_outputs(case: Case, builds: dict[str, Any]) -> dict[str, Any]:
    """Max abs error against onnxruntime of both builds at every size (and MiniLM's cosine)."""
    import graphopt
    from graphopt.reference import ort_session

    session = ort_session(builds["onnx"])
    dynamic = graphopt.load(builds["dynamic"])
    out: dict[str, Any] = {}
    for n in case.sizes:
        feed = feeds(case.kind, n)
        ref = session.run(None, feed)[0]
        row = {}
        for key, art in (("dynamic", dynamic), ("static", graphopt.load(builds["static"][str(n)]))):
            got = next(iter(art.run(feed).values()))
            row[f"{key}_max_abs_error"] = float(np.abs(got - ref).max())
        out[str(n)] = row
    return out


def _one_process(runtime: str, model: str, case: Case, size: int, runs: int) -> dict:
    cmd = [sys.executable, "-m", "bench.shapes_worker", runtime, model, case.kind]
    cmd += [str(size), str(runs), "3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_size(case: Case, builds: dict[str, Any], size: int, rounds: int, runs: int) -> dict:
    """One process per contestant, alternated A B C C B A; pooled and per-round medians."""
    procs = {
        "graphopt_dynamic": ("graphopt", builds["dynamic"]),
        "graphopt_static": ("graphopt", builds["static"][str(size)]),
        "onnxruntime": ("onnxruntime", builds["onnx"]),
    }
    pooled: dict[str, list[float]] = {n: [] for n in procs}
    per_round: dict[str, list[float]] = {n: [] for n in procs}
    for r in range(rounds):
        for name in CONTESTANTS if r % 2 == 0 else CONTESTANTS[::-1]:
            got = _one_process(*procs[name], case, size, runs)
            pooled[name] += got["ms"]
            per_round[name].append(float(np.median(got["ms"])))
    row: dict[str, Any] = {
        n: {"median_ms": round(float(np.median(pooled[n])), 3), "round_medians_ms": per_round[n]}
        for n in procs
    }
    for base in ("graphopt_static", "onnxruntime"):
        pairs = [a / b for a, b in zip(per_round["graphopt_dynamic"], per_round[base])]
        row[f"dynamic_vs_{base}"] = round(float(np.median(pairs)), 2)
    pairs = [a / b for a, b in zip(per_round["graphopt_static"], per_round["onnxruntime"])]
    row["static_vs_onnxruntime"] = round(float(np.median(pairs)), 2)
    return row


def bench_case(
    name: str, case: Case, work: Path, level: int, rounds: int, runs: int
) -> dict[str, Any]:
    builds = compile_builds(name, case, work, level)
    result: dict[str, Any] = {
        "model": name,
        "opt_level": level,
        "onnx": case.export,
        "input_shape": f"{case.input}={case.dynamic}",
        "compile_s": builds["compile_s"],
        "accuracy_vs_onnxruntime": check_outputs(case, builds),
        "sizes": {},
    }
    for n in case.sizes:
        load = _load()
        _say(f"[{name} -O{level}] size {n}: {rounds} rounds x {runs} runs (load {load})")
        result["sizes"][str(n)] = {"load_before": load, **time_size(case, builds, n, rounds, runs)}
    return result


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    header = [
        "model",
        "-O",
        "size",
        "onnxruntime ms",
        "graphopt static ms",
        "graphopt dynamic ms",
        "dynamic / static",
        "dynamic / onnxruntime",
        "static / onnxruntime",
        "max abs error (dynamic)",
        "load",
    ]
    rows = []
    for r in results:
        for n, s in r["sizes"].items():
            size = f"{n} tokens" if r["model"].startswith("minilm") else f"{n} batch"
            size = f"{n}x{n} pixels" if "_hw" in r["model"] else size
            err = r["accuracy_vs_onnxruntime"][n]["dynamic_max_abs_error"]
            rows.append(
                [
                    r["model"],
                    str(r["opt_level"]),
                    size,
                    f"{s['onnxruntime']['median_ms']:.2f}",
                    f"{s['graphopt_static']['median_ms']:.2f}",
                    f"{s['graphopt_dynamic']['median_ms']:.2f}",
                    f"{s['dynamic_vs_graphopt_static']:.2f}x",
                    f"{s['dynamic_vs_onnxruntime']:.2f}x",
                    f"{s['static_vs_onnxruntime']:.2f}x",
                    f"{err:.1e}",
                    s["load_before"].split()[0],
                ]
            )
    from graphopt.tables import format_table

    shapes = {r["model"]: r["input_shape"] for r in results}
    builds = ", ".join(f"{m}: `--input-shape {shape}`" for m, shape in shapes.items())
    return (
        "# Symbolic shapes: one build for every size\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads per "
        f"runtime; {machine['date']}. Dynamic builds: {builds}; static builds pin each size. "
        "Times are medians over every run of every round; ratios are medians of per-round "
        "ratios (lower is faster). Load is the 1-minute load average before each size. "
        "onnxruntime runs the fp32 model (the int8 rows' errors are int8 against fp32).\n\n"
        + format_table(header, rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--opt-levels", default="2,3", help="comma-separated -O levels")
    parser.add_argument("--out", default="shapes", help="results name under bench/results")
    args = parser.parse_args(argv)
    from graphopt.machine import machine_info

    machine = machine_info()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-shapes-") as tmp:
        for level in (int(v) for v in args.opt_levels.split(",")):
            for name in args.models.split(","):
                case = CASES[name]
                results.append(bench_case(name, case, Path(tmp), level, args.rounds, args.runs))
    data = {"machine": machine, "load_after": _load(), "results": results}
    write_results(RESULTS, args.out, data, markdown(results, machine))
    print(markdown(results, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
