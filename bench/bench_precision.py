"""16-bit precision (`--precision`) on MobileNetV2, EfficientNet-Lite0 and all-MiniLM-L6-v2:
graphopt fp32, bf16 (first and last layer fp32) and mixed (bf16 under --max-drop) against
onnxruntime fp32 and OpenVINO fp32 and its default precision hint.

    python -m bench.bench_precision [--runs 50] [--models mobilenet_v2,minilm] [--quick]

- Quality vs onnxruntime fp32: CNNs top-1 agreement (and min cosine of the logits) on the
  evaluation photo crops (bench/models/inputs.py); MiniLM min / mean embedding cosine on the
  24 evaluation sentences. mixed budgets on other data (the calibration crops, the
  calibration sentences of bench_int8).
- Size: the tensor constants in each graphopt library (graphopt.sizes), over fp32's.
- Latency: every runtime interleaved in one process on one input (graphopt.timing), 2
  threads; ratios over graphopt fp32 and onnxruntime fp32. Run it on a quiet machine.
- OpenVINO (the bench extras): `INFERENCE_PRECISION_HINT=f32`, and its default hint (bf16
  on a CPU with AVX512_BF16 or AMX, f32 elsewhere: the hint it chose is recorded).
- Batch-1 matmuls alone (MiniLM's FFN shapes, MobileNetV2's classifier): graphopt fp32 vs
  bf16 vs onnxruntime, where half the weight bytes should show.
`--quick`: quality and sizes only (no timing), for a correctness run on a loaded machine.
Writes bench/results/precision.json and precision.md.
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

import graphopt
from bench.bench_int8 import CALIB_SENTENCES, calibration_images, cnn_quality, cosine_quality
from bench.writing import write_results
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.machine import machine_info
from graphopt.reference import ort_run, ort_session
from graphopt.sizes import library_weights
from graphopt.tables import format_table
from graphopt.timing import interleaved

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenet_v2", "efficientnet_lite0", "minilm")
MAX_DROP = {"minilm": 0.5, "cnn": 2.0}  # min-cosine points / top-1 agreement points


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _data(name: str, workdir: Path):
    """Model path, evaluation feeds, the metric and the budget's data file."""
    from bench.models.export import export
    from bench.models.inputs import sentence_batch, split_crops, tokenize

    path = export(name)
    if name == "minilm":
        cal = [tokenize(s) for s in CALIB_SENTENCES]
        np.savez(workdir / "budget.npz", **{k: np.concatenate([c[k] for c in cal]) for k in cal[0]})
        return path, sentence_batch(24), "min_cosine", MAX_DROP["minilm"]
    np.savez(workdir / "budget.npz", input=np.concatenate(calibration_images()[:32]))
    feeds = [{"input": x} for _, x in split_crops("evaluation")]
    return path, feeds, "top1_agreement", MAX_DROP["cnn"]


def _graphopt(path, workdir: Path, name: str, metric: str, max_drop: float):
    """graphopt fp32, bf16 and mixed artifacts and their compile seconds."""
    variants = {
        "graphopt_fp32": None,
        "graphopt_bf16": PrecisionOptions("bf16"),
        "graphopt_mixed": PrecisionOptions(
            "mixed", max_drop=max_drop, calibration=str(workdir / "budget.npz"), metric=metric
        ),
    }
    arts, seconds = {}, {}
    for key, opts in variants.items():
        _say(f"[{name}] {key}")
        start = time.perf_counter()
        compression = [Precision(opts)] if opts else []
        arts[key] = graphopt.compile(path, workdir / key, compression=compression, progress=_say)
        seconds[key] = round(time.perf_counter() - start, 1)
    return arts, seconds


def _openvino(path) -> dict[str, Any]:
    """OpenVINO runners: f32 and the default precision hint (what it chose is recorded)."""
    import openvino as ov

    core, out = ov.Core(), {}
    model = ov.convert_model(str(path))
    threads = {"INFERENCE_NUM_THREADS": str(os.cpu_count() or 1), "PERFORMANCE_HINT": "LATENCY"}
    for key, hint in (
        ("openvino_f32", {"INFERENCE_PRECISION_HINT": "f32"}),
        ("openvino_default", {}),
    ):
        compiled = core.compile_model(model, "CPU", {**threads, **hint})
        request, output = compiled.create_infer_request(), compiled.output(0)
        precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        out[key] = (lambda f, r=request, o=output: np.array(r.infer(f)[o]), precision)
    return out


def bench_model(name: str, runs: int, workdir: Path, quick: bool) -> dict[str, Any]:
    path, feeds, metric, max_drop = _data(name, workdir)
    arts, seconds = _graphopt(path, workdir, name, metric, max_drop)
    entry: dict[str, Any] = {"model": name, "compile_s": seconds, "max_drop": max_drop}
    out = arts["graphopt_fp32"].outputs[0].name
    ort = ort_session(path)
    runners = {"ort_fp32": lambda f: ort_run(ort, f)[out]}
    runners.update({k: (lambda f, a=a: a.run(f)[out]) for k, a in arts.items()})
    try:
        for key, (run, precision) in _openvino(path).items():
            runners[key] = run
            entry.setdefault("openvino_precision", {})[key] = precision
    except ImportError as err:
        entry["openvino"] = f"skipped: not installed ({err})"
    ref = [runners["ort_fp32"](f) for f in feeds]
    quality = cosine_quality if name == "minilm" else cnn_quality
    entry["quality_vs_ort_fp32"] = {
        k: quality(ref, [run(f) for f in feeds]) for k, run in runners.items()
    }
    w32 = library_weights(arts["graphopt_fp32"].library_path).weight_bytes
    entry["weight_bytes"] = {
        k: library_weights(a.library_path).weight_bytes for k, a in arts.items()
    }
    entry["weight_ratio"] = {k: round(v / w32, 3) for k, v in entry["weight_bytes"].items()}
    entry["layers"] = {
        k: _layer_counts(a.manifest) for k, a in arts.items() if k != "graphopt_fp32"
    }
    if not quick:
        entry.update(_timing(name, feeds[0], runs, runners))
    return entry


def _layer_counts(manifest: dict) -> dict:
    m = manifest.get("precision", {})
    return {"bf16": m.get("low_layers"), "layers": len(m.get("layers", [])), "note": m.get("note")}


def _timing(name: str, feed: dict, runs: int, runners: dict) -> dict:
    contestants = {k: (lambda run=run: run(feed)) for k, run in runners.items()}
    _say(f"[{name}] timing {', '.join(contestants)} interleaved, {runs} runs")
    timings = interleaved(contestants, runs=runs, warmup=3, settle=1)
    med = {k: t.median_ms for k, t in timings.items()}
    ratios = {
        k: {"over_graphopt_fp32": round(v / med["graphopt_fp32"], 3),
            "over_ort_fp32": round(v / med["ort_fp32"], 3)}
        for k, v in med.items()
    }  # fmt: skip
    return {"latency": {k: t.to_json() for k, t in timings.items()}, "time_ratios": ratios}


GEMV_SHAPES = ((384, 1536), (1536, 384), (1280, 1000))  # MiniLM FFN, MobileNetV2 classifier


def gemv(workdir: Path, runs: int) -> list[dict[str, Any]]:
    """Batch-1 matmuls alone (x [1, K] @ W [K, N]): graphopt fp32 vs bf16 vs onnxruntime,
    where halving the weight bytes read should show."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = []
    for k, n in GEMV_SHAPES:
        w = np.random.default_rng(k).standard_normal((k, n)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
            [numpy_helper.from_array(w, "w")],
        )  # fmt: skip
        path = workdir / f"gemv_{k}x{n}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        bf16 = [Precision(PrecisionOptions("bf16", edges=True))]
        arts = {
            "graphopt_fp32": graphopt.compile(path, workdir / f"g32_{k}x{n}"),
            "graphopt_bf16": graphopt.compile(path, workdir / f"g16_{k}x{n}", compression=bf16),
        }
        feed = {"x": np.ones((1, k), np.float32)}
        ort = ort_session(path)
        contestants = {"ort_fp32": lambda o=ort, f=feed: ort_run(o, f)}
        contestants.update({name: a.runner(feed) for name, a in arts.items()})
        timings = interleaved(contestants, runs=runs, warmup=5, settle=1)
        med = {name: round(t.median_ms * 1000, 1) for name, t in timings.items()}
        rows.append({"shape": [k, n], "median_us": med})
    return rows


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    rows = []
    for r in results:
        for k, q in r["quality_vs_ort_fp32"].items():
            score = q.get("top1_agreement") or f"{q['min_cosine']:.4f} / {q['mean_cosine']:.4f}"
            lat = r.get("latency", {}).get(k, {}).get("median_ms")
            ratio = r.get("time_ratios", {}).get(k, {}).get("over_graphopt_fp32")
            rows.append(
                [r["model"], k, score, r.get("weight_ratio", {}).get(k, ""), lat or "", ratio or ""]
            )
    cols = [
        "model",
        "runtime",
        "top-1 agreement / min, mean cosine",
        "weights / fp32",
        "median ms",
        "time / graphopt fp32",
    ]
    return (
        f"# 16-bit precision\n\nMachine: {machine}\n\n{format_table(cols, rows)}\n\n"
        "Quality against onnxruntime fp32 on the evaluation photos / sentences; weights: the\n"
        "graphopt library's tensor constants over fp32's.\n"
    )


def _gemv_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    names = list(rows[0]["median_us"])
    table = [
        [f"{r['shape'][0]}x{r['shape'][1]}", *(r["median_us"][n] for n in names)] for r in rows
    ]
    return "\nBatch-1 matmuls, median us:\n\n" + format_table(["K x N", *names], table) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--quick", action="store_true", help="quality and sizes only, no timing")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for name in args.models.split(","):
            (Path(tmp) / name).mkdir()
            results.append(bench_model(name, args.runs, Path(tmp) / name, args.quick))
    gemvs = []
    if not args.quick:
        with tempfile.TemporaryDirectory(prefix="bench-precision-gemv-") as tmp:
            gemvs = gemv(Path(tmp), args.runs * 4)
    machine = machine_info()
    text = markdown(results, machine) + _gemv_markdown(gemvs)
    stem = "precision-quick" if args.quick else "precision"
    data = {"machine": machine, "results": results, "gemv": gemvs}
    write_results(RESULTS, stem, data, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
