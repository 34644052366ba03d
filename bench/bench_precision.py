"""16-bit precision (`--precision`) on MobileNetV2, EfficientNet-Lite0 and all-MiniLM-L6-v2:
graphopt fp32, bf16 (first and last layer measured) and mixed (bf16 under --max-drop) against
onnxruntime fp32 and OpenVINO fp32 and its default precision hint.

    python -m bench.bench_precision [--runs 20] [--rounds 25] [--models minilm] [--quick]

- Quality vs onnxruntime fp32: CNNs top-1 agreement (and min cosine of the logits) on the
  evaluation photo crops (bench/models/inputs.py); MiniLM min / mean embedding cosine on the
  24 evaluation sentences. bf16 measures its first and last layer, and mixed budgets, on
  other data (the calibration crops, the calibration sentences of bench_int8).
- Size: the tensor constants in each graphopt library (graphopt.sizes), over fp32's.
- Latency: each runtime in its own long-lived process (2 threads, one input, warm-up), asked
  in turn for slots of `--runs` timed calls, `--rounds` rounds in alternating order
  (bench/pool.py); medians over rounds of each slot's median, and ratios over graphopt fp32
  and onnxruntime fp32 taken within each round (medians of those). Run it on a quiet machine.
- graphopt at `-O3` (`--opt-level`): fp32, bf16 (`--precision bf16 --calibration ...`: the
  first and last layer 16-bit where measured safe) and mixed.
- OpenVINO (the bench extras): `INFERENCE_PRECISION_HINT=f32`, and its default hint (bf16
  on a CPU with AVX512_BF16 or AMX, f32 elsewhere: the hint it chose is recorded).
- Batch-1 matmuls alone (MiniLM's FFN shapes, MobileNetV2's classifier): graphopt fp32 vs
  bf16 vs onnxruntime, where half the weight bytes should show.
`--quick`: quality and sizes only (no timing), for a correctness run on a loaded machine.
Writes bench/results/precision.json and precision.md (`--out NAME`: NAME.json, NAME.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import graphopt
from bench.bench_int8 import CALIB_SENTENCES, calibration_images, cnn_quality, cosine_quality
from bench.pool import Pool, paired_ratios
from bench.worker import serve
from bench.writing import write_results
from graphopt import env
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.machine import machine_info
from graphopt.reference import ort_run, ort_session
from graphopt.sizes import library_weights
from graphopt.tables import format_table
from graphopt.timing import interleaved

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenet_v2", "efficientnet_lite0", "minilm")
MAX_DROP = {"minilm": 0.5, "cnn": 2.0}  # min-cosine points / top-1 agreement points
THREADS = "2"
OV_HINTS = {"openvino_f32": {"INFERENCE_PRECISION_HINT": "f32"}, "openvino_default": {}}


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


def _graphopt(path, workdir: Path, name: str, metric: str, max_drop: float, opt_level: int):
    """graphopt fp32, bf16 and mixed artifacts and their compile seconds."""
    variants = {
        "graphopt_fp32": None,
        "graphopt_bf16": PrecisionOptions(
            "bf16", calibration=str(workdir / "budget.npz"), metric=metric
        ),
        "graphopt_mixed": PrecisionOptions(
            "mixed", max_drop=max_drop, calibration=str(workdir / "budget.npz"), metric=metric
        ),
    }
    arts, seconds = {}, {}
    for key, opts in variants.items():
        _say(f"[{name}] {key}")
        start = time.perf_counter()
        compression = [Precision(opts)] if opts else []
        arts[key] = graphopt.compile(
            path, workdir / key, opt_level=opt_level, compression=compression, progress=_say
        )
        seconds[key] = round(time.perf_counter() - start, 1)
    return arts, seconds


def _openvino(path, key: str):
    """An OpenVINO runner (`key`: openvino_f32 or openvino_default) and the precision it chose."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY", **OV_HINTS[key]}
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", config)
    request, output = compiled.create_infer_request(), compiled.output(0)
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return (lambda f: np.array(request.infer(f)[output])), precision


def _runner(key: str, path: Path):
    """A callable running one feed for a contestant: a graphopt artifact directory, or the
    ONNX file for onnxruntime and OpenVINO."""
    if key.startswith("graphopt"):
        art = graphopt.load(path)
        out = art.outputs[0].name
        return lambda f: art.run(f)[out]
    if key.startswith("openvino"):
        return _openvino(path, key)[0]
    session = ort_session(path, threads=int(THREADS))
    out = session.get_outputs()[0].name
    return lambda f: ort_run(session, f)[out]


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path, feeds, metric, max_drop = _data(name, workdir)
    arts, seconds = _graphopt(path, workdir, name, metric, max_drop, args.opt_level)
    entry: dict[str, Any] = {"model": name, "compile_s": seconds, "max_drop": max_drop}
    entry["opt_level"] = args.opt_level
    paths = {"ort_fp32": path, **{k: a.directory for k, a in arts.items()}}
    try:
        for key in OV_HINTS:
            entry.setdefault("openvino_precision", {})[key] = _openvino(path, key)[1]
            paths[key] = path
    except ImportError as err:
        entry["openvino"] = f"skipped: not installed ({err})"
    runners = {k: _runner(k, p) for k, p in paths.items()}
    ref = [runners["ort_fp32"](f) for f in feeds]
    quality = cosine_quality if name == "minilm" else cnn_quality
    entry["quality_vs_ort_fp32"] = {
        k: quality(ref, [run(f) for f in feeds]) for k, run in runners.items()
    }
    del runners
    w32 = library_weights(arts["graphopt_fp32"].library_path).weight_bytes
    entry["weight_bytes"] = {
        k: library_weights(a.library_path).weight_bytes for k, a in arts.items()
    }
    entry["weight_ratio"] = {k: round(v / w32, 3) for k, v in entry["weight_bytes"].items()}
    entry["layers"] = {
        k: _layer_counts(a.manifest) for k, a in arts.items() if k != "graphopt_fp32"
    }
    if not args.quick:
        entry.update(_latency(name, paths, args.runs, args.rounds))
    return entry


def _layer_counts(manifest: dict) -> dict:
    m = manifest.get("precision", {})
    return {"bf16": m.get("low_layers"), "layers": len(m.get("layers", [])), "note": m.get("note")}


def _feed(name: str) -> dict[str, np.ndarray]:
    """The one input every timed run uses: the first evaluation sentence / photo crop."""
    from bench.models.inputs import sentence_batch, split_crops

    return sentence_batch(1)[0] if name == "minilm" else {"input": split_crops("evaluation")[0][1]}


def serve_one(name: str, key: str, path: Path) -> None:
    """This process times one contestant on one input, slot by slot (bench.worker.serve)."""
    feed, run = _feed(name), _runner(key, path)
    serve(lambda: run(feed))


def _latency(name: str, paths: dict[str, Path], runs: int, rounds: int) -> dict[str, Any]:
    """Each contestant in its own long-lived process, timed in `rounds` interleaved slots of
    `runs` calls (bench/pool.py); medians over rounds, ratios within rounds."""
    env_vars = {**os.environ, env.NUM_THREADS.name: THREADS}
    me = [sys.executable, "-m", "bench.bench_precision", "--serve", name]
    with Pool({k: [*me, k, str(p)] for k, p in paths.items()}, env_vars) as pool:
        got = pool.rounds(rounds, runs, lambda m: _say(f"[{name}] {m}"))
    med = {k: statistics.median(v) for k, v in got.items()}
    bases = [b for b in ("graphopt_fp32", "ort_fp32", "openvino_default") if b in got]
    over = {b: paired_ratios(got, b) for b in bases}
    ratios = {k: {f"over_{b}": round(over[b][k], 3) for b in bases} for k in got}
    latency = {
        k: {"median_ms": round(med[k], 3), "rounds_ms": [round(x, 3) for x in v]}
        for k, v in got.items()
    }
    return {"latency": latency, "time_ratios": ratios}


GEMV_SHAPES = ((384, 1536), (1536, 384), (1280, 1000))  # MiniLM FFN, MobileNetV2 classifier
GEMV_RUNS = 200


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
            score = q.get("top1_agreement") or f"{q['min_cosine']:.6f} / {q['mean_cosine']:.6f}"
            lat = r.get("latency", {}).get(k, {}).get("median_ms")
            ratio = r.get("time_ratios", {}).get(k, {})
            rows.append(
                [r["model"], k, score, r.get("weight_ratio", {}).get(k, ""), lat or "",
                 ratio.get("over_graphopt_fp32", ""), ratio.get("over_openvino_default", "")]
            )  # fmt: skip
    cols = [
        "model",
        "runtime",
        "top-1 agreement / min, mean cosine",
        "weights / fp32",
        "median ms",
        "time / graphopt fp32",
        "time / OpenVINO default",
    ]
    return (
        f"# 16-bit precision\n\nMachine: {machine}\n\n{format_table(cols, rows)}\n\n"
        "Quality against onnxruntime fp32 on the evaluation photos / sentences; weights: the\n"
        "graphopt library's tensor constants over fp32's; median ms: over rounds of each\n"
        "contestant's slot medians; time ratios: medians of the ratios within each round.\n"
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
    ap.add_argument("--runs", type=int, default=20, help="calls per contestant and round")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=25, help="interleaved slots per contestant")
    ap.add_argument("--opt-level", type=int, default=3, help="graphopt's -O for every variant")
    ap.add_argument("--quick", action="store_true", help="quality and sizes only, no timing")
    ap.add_argument("--out", default=None, help="results name under bench/results")
    ap.add_argument("--serve", nargs=3, metavar=("MODEL", "KEY", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve_one(args.serve[0], args.serve[1], Path(args.serve[2]))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for name in args.models.split(","):
            (Path(tmp) / name).mkdir()
            results.append(bench_model(name, args, Path(tmp) / name))
    gemvs = []
    if not args.quick:
        with tempfile.TemporaryDirectory(prefix="bench-precision-gemv-") as tmp:
            gemvs = gemv(Path(tmp), GEMV_RUNS)
    machine = machine_info()
    text = markdown(results, machine) + _gemv_markdown(gemvs)
    stem = args.out or ("precision-quick" if args.quick else "precision")
    data = {"machine": machine, "results": results, "gemv": gemvs}
    write_results(RESULTS, stem, data, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
