"""int8 accuracy and speed: graphopt vs onnxruntime's quantizer and NNCF on OpenVINO.

    python -m bench.bench_int8 [--models digits,mobilenet_v2,efficientnet_lite0,minilm]

- digits (bundled CNN): labelled accuracy on graphopt/models/digits_eval.npz, fp32 vs int8;
  calibrated on the model's own training split.
- MobileNetV2, EfficientNet-Lite0: calibrated and evaluated on photos split by source photo
  (bench/models/inputs.py, `split_crops`; recorded under "split" in the JSON):
  calibration 32 crops of 8 photos (retina, colorwheel, camera, coins, brick, gravel, clock,
  cell); evaluation 64 crops of 8 other photos (astronaut, coffee, chelsea, rocket, china,
  flower, motorcycle, hubble_deep_field); validation 48 crops of 6 more (immunohistochemistry,
  logo, moon, grass, page, text), the photos int8-flow choices were made on. No photo (nor a
  second view of one scene) is in two roles. Against fp32 onnxruntime: top-1 agreement, "fp32
  top-1 within the int8 top-5", mean KL(softmax fp32 || softmax int8), min logit cosine.
- all-MiniLM-L6-v2: dynamic int8; minimum embedding cosine vs fp32 over real sentences.
graphopt's "int8" rows run the default flow (every layer int8, speed check off); "--max-drop"
rows keep the most sensitive layers fp32 until top-1 agreement on the calibration crops is
within --max-drop points (default 1). Each graphopt row records its quantization time:
calibration and sensitivity + budget search (the manifest's quantization.seconds and
accuracy.seconds) beside the compile report's seconds.
Peers, same calibration crops: onnxruntime quantize_static (quant_pre_process, QDQ,
per-channel, uint8 activations) for the CNNs, quantize_dynamic for MiniLM; its int8 models run
both with its default optimizations and with ORT_DISABLE_ALL (its optimized int8 kernels can
saturate on CPUs without VNNI). NNCF int8 PTQ (`nncf.quantize`, default preset) on the
OpenVINO model, run by OpenVINO with INFERENCE_PRECISION_HINT=f32 (its float parts would run
bf16 otherwise), accuracy only (CNNs; skipped when openvino/nncf are not installed).
Latency: medians of interleaved runs in one process (graphopt and onnxruntime only; one
process per runtime is the fair protocol, /work/shared/PEERS.md: read these as rough). Size:
the weight bytes each library carries (its tensor constants, graphopt.sizes; by dtype and
breakdown in the JSON) and the whole library file.
Writes bench/results/int8.json and int8.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import graphopt
from bench.writing import write_results
from graphopt import env
from graphopt.compress.int8.flow import QuantOptions
from graphopt.machine import machine_info
from graphopt.reference import ort_run, ort_session
from graphopt.sizes import library_weights
from graphopt.tables import format_table
from graphopt.timing import interleaved

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("digits", "mobilenet_v2", "efficientnet_lite0", "minilm")
ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "graphopt/models/digits_cnn.onnx"
DIGITS_EVAL = ROOT / "graphopt/models/digits_eval.npz"

# Calibration sentences for MiniLM (none of them is in the evaluation set).
CALIB_SENTENCES = [
    "The weather forecast says it will be sunny tomorrow afternoon.",
    "Our team shipped the new release after two weeks of testing.",
    "A small boat drifted slowly across the quiet lake.",
    "Where can I find the nearest pharmacy that is open late?",
    "The orchestra played a symphony by a little-known composer.",
    "Prices of fresh vegetables rose again at the local market.",
    "She taught her younger brother how to ride a bicycle.",
    "The library extended its opening hours during the exam period.",
]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def calibration_images() -> list[np.ndarray]:
    """The calibration crops of the split (bench/models/inputs.py): photos that are neither
    evaluation nor validation photos."""
    from bench.models.inputs import split_crops

    return [x for _, x in split_crops("calibration")]


def _nncf_openvino(path: Path, calib: list[np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """NNCF int8 PTQ of the OpenVINO model on the calibration crops, compiled by OpenVINO
    with fp32 inference precision; (run(x) -> logits, info)."""
    import nncf
    import openvino as ov

    start = time.perf_counter()
    model = ov.convert_model(str(path))
    dataset = nncf.Dataset([{"input": x} for x in calib])
    quantized = nncf.quantize(model, dataset, subset_size=len(calib))
    seconds = time.perf_counter() - start
    cfg = {
        "INFERENCE_NUM_THREADS": str(os.cpu_count() or 1),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled = ov.Core().compile_model(quantized, "CPU", cfg)
    request = compiled.create_infer_request()
    output = compiled.output(0)
    info = {
        "versions": {"openvino": ov.__version__, "nncf": nncf.__version__},
        "quantize_s": round(seconds, 2),
        "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
    }
    return (lambda x: np.array(request.infer({"input": x})[output])), info


def _ort_static(path: Path, calib: list[np.ndarray], dest: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"input": x} for x in calib)

        def get_next(self):
            return next(self.it, None)

    from onnxruntime.quantization import quant_pre_process

    pre = dest.with_name(dest.stem + "-pre.onnx")
    try:
        quant_pre_process(str(path), str(pre))
        path = pre
    except Exception as err:  # noqa: BLE001 - the quantizer still runs on the raw model
        _say(f"onnxruntime quant_pre_process failed ({str(err)[:120]}); quantizing as is")
    quantize_static(
        str(path),
        str(dest),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return dest


def _ort_dynamic(path: Path, dest: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(path), str(dest), weight_type=QuantType.QInt8)
    return dest


def _top(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits.ravel())[:k]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.ravel().astype(np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def cnn_quality(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    agree = sum(int(_top(r, 1)[0] == _top(g, 1)[0]) for r, g in zip(ref, got))
    in5 = sum(int(_top(r, 1)[0] in _top(g, 5)) for r, g in zip(ref, got))
    kl, cos = [], []
    for r, g in zip(ref, got):
        lr, lg = _log_softmax(r), _log_softmax(g)
        kl.append(float(np.sum(np.exp(lr) * (lr - lg))))
        a, b = r.ravel().astype(np.float64), g.ravel().astype(np.float64)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {
        "top1_agreement": f"{agree}/{len(ref)}",
        "fp32_top1_in_int8_top5": f"{in5}/{len(ref)}",
        "mean_kl": round(float(np.mean(kl)), 4),
        "min_cosine": round(min(cos), 4),
    }


def cosine_quality(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    cos = []
    for r, g in zip(ref, got):
        a, b = r.ravel().astype(np.float64), g.ravel().astype(np.float64)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return {"min_cosine": round(min(cos), 6), "mean_cosine": round(float(np.mean(cos)), 6)}


def _int8_artifact(path, out: Path, quant: QuantOptions, name: str):
    """Compile int8 (integer kernels; fake-quant if they fail, saying why) and summarize."""
    info: dict[str, Any] = {}
    try:
        art, info["compile_s"] = _compile(path, out, quant, name)
    except Exception as err:  # noqa: BLE001 - integer kernels failed: measure fake-quant, say so
        info["lower_int8_error"] = str(err).strip().splitlines()[0][:300]
        _say(f"[{name}] int8 with integer kernels failed ({info['lower_int8_error']}); fake-quant")
        quant = dataclasses.replace(quant, integer_kernels=False)
        art, info["compile_s"] = _compile(path, out.with_name(out.name + "-fq"), quant, name)
    q = art.manifest["quantization"]
    acc = q["accuracy"] or {}
    info["seconds"] = {
        "quantization": q.get("seconds", {}),
        "sensitivity": acc.get("seconds", {}),
        "compile_report": art.manifest["report"]["seconds"],
    }
    info.update(
        kernels=q["kernels"],
        int8_layers=f"{q['int8_layers']}/{len(q['layers'])}",
        accuracy={k: v for k, v in (q["accuracy"] or {}).items() if k != "layers"},
        settings={
            k: q["settings"][k]
            for k in ("method", "mode", "per_channel", "act_dtype", "max_drop", "granularity")
        },
    )
    return art, info


def _compile(path, out: Path, quant: QuantOptions | None, name: str) -> tuple[Any, float]:
    _say(f"[{name}] graphopt compile {'int8' if quant else 'fp32'}")
    start = time.perf_counter()
    art = graphopt.compile(path, out, opt_level=2, quantization=quant, progress=_say)
    return art, time.perf_counter() - start


def model_data(name: str, workdir: Path, method: str, max_drop: float | None, entry: dict):
    """The model file, evaluation feeds (and labels), calibration arrays and int8 options."""
    from bench.models.inputs import sentence_batch, split_crops, tokenize

    if name == "digits":
        from graphopt.models.train_digits import load_split

        path = DIGITS
        x_train = load_split()[0].reshape(-1, 1, 8, 8).astype(np.float32)
        calib = {"input": x_train[:256]}
        ev = np.load(DIGITS_EVAL)
        feeds = [{"input": ev["x"][i : i + 1]} for i in range(len(ev["x"]))]
        labels = ev["y"]
        quant = QuantOptions(str(workdir / "calib.npz"), method, eval_data=str(DIGITS_EVAL))
    elif name == "minilm":
        from bench.models.export import export

        path = export(name)
        feeds = sentence_batch(24)
        cal = [tokenize(s) for s in CALIB_SENTENCES]
        calib = {k: np.concatenate([c[k] for c in cal]) for k in cal[0]}
        labels = None
        # Embeddings: sensitivity reports the min cosine on the calibration sentences.
        quant = QuantOptions(
            str(workdir / "calib.npz"),
            method,
            mode="dynamic",
            granularity="row",
            metric="min_cosine",
        )
    else:
        from bench.models.export import export

        path = export(name)
        feeds = [{"input": x} for _, x in split_crops("evaluation")]
        entry["validation_feeds"] = [{"input": x} for _, x in split_crops("validation")]
        images = calibration_images()
        calib = {"input": np.concatenate(images)}
        labels = None
        # --max-drop on the calibration photos (not the evaluation ones): top-1 agreement with
        # fp32 within --max-drop points, keeping the most sensitive layers fp32.
        quant = QuantOptions(
            str(workdir / "calib.npz"), method, sensitivity_samples=32, max_drop=max_drop
        )
    return path, feeds, labels, calib, quant


def bench_model(
    name: str, runs: int, workdir: Path, method: str, max_drop: float | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": name}
    path, feeds, labels, calib, quant = model_data(name, workdir, method, max_drop, entry)
    np.savez(workdir / "calib.npz", **calib)

    fp32, entry["compile_fp32_s"] = _compile(path, workdir / f"{name}-fp32", None, name)
    # Every layer int8 (no --max-drop, no speed check: on a loaded machine its timings would
    # keep arbitrary layers fp32); the --max-drop variant is the default flow, speed check on.
    variants = {"graphopt_int8": dataclasses.replace(quant, max_drop=None, speed_check=False)}
    if quant.max_drop is not None:
        variants["graphopt_int8_maxdrop"] = quant
    int8s, entry["graphopt_quantization"], entry["library_size_ratio"] = {}, {}, {}
    fp32_w = library_weights(fp32.library_path)
    entry["weights"], entry["weight_size_ratio"] = {"graphopt_fp32": fp32_w.to_json()}, {}
    for key, opts in variants.items():
        art, info = _int8_artifact(path, workdir / f"{name}-{key}", opts, name)
        int8s[key] = art
        entry["graphopt_quantization"][key] = info
        ratio = art.library_path.stat().st_size / fp32.library_path.stat().st_size
        entry["library_size_ratio"][key] = round(ratio, 3)
        weights = library_weights(art.library_path)
        entry["weights"][key] = weights.to_json()
        entry["weight_size_ratio"][key] = round(weights.weight_bytes / fp32_w.weight_bytes, 3)

    out = fp32.outputs[0].name
    ort_fp32 = ort_session(path)
    if name == "minilm":
        ort_path = _ort_dynamic(path, workdir / f"{name}-ort-int8.onnx")
    else:
        ort_calib = [x["input"][None] for x in [{"input": c} for c in calib["input"]]]
        ort_path = _ort_static(path, ort_calib, workdir / f"{name}-ort-int8.onnx")
    entry["onnx_size_ratio_ort"] = round(ort_path.stat().st_size / Path(path).stat().st_size, 3)
    ort_int8 = ort_session(ort_path)
    ort_int8_plain = ort_session(ort_path, optimize=False)

    runners = {
        "graphopt_fp32": lambda f: fp32.run(f)[out],
        **{k: (lambda f, a=a: a.run(f)[out]) for k, a in int8s.items()},
        "ort_int8": lambda f: ort_run(ort_int8, f)[out],
        "ort_int8_disable_all": lambda f: ort_run(ort_int8_plain, f)[out],
    }
    if name not in ("digits", "minilm"):
        try:
            nncf_run, entry["nncf_openvino"] = _nncf_openvino(path, list(calib["input"][:, None]))
            runners["nncf_openvino_f32"] = lambda f: nncf_run(f["input"])
        except ImportError as err:
            entry["nncf_openvino"] = {"skipped": f"not installed ({err})"}
    _say(f"[{name}] running {len(feeds)} real inputs")
    ref = [ort_run(ort_fp32, f)[out] for f in feeds]
    outputs = {k: [run(f) for f in feeds] for k, run in runners.items()}
    validation = entry.pop("validation_feeds", None)
    if validation:
        ref_v = [ort_run(ort_fp32, f)[out] for f in validation]
        entry["quality_validation"] = {
            k: cnn_quality(ref_v, [run(f) for f in validation]) for k, run in runners.items()
        }
    entry["quality_vs_fp32"] = _quality(name, ref, outputs, labels)

    entry.update(_timing(name, feeds[0], runs, ort_fp32, ort_int8, ort_int8_plain, fp32, int8s))
    return entry


def _quality(name: str, ref, outputs: dict, labels) -> dict:
    """Each contestant's outputs against fp32: labelled accuracy, embedding cosine or CNN
    top-1 agreement / KL / cosine."""
    quality = {}
    for k, got in outputs.items():
        if labels is not None:
            pred = np.array([int(np.argmax(g)) for g in got])
            quality[k] = {"accuracy_pct": round(100 * float(np.mean(pred == labels)), 2)}
        elif name == "minilm":
            quality[k] = cosine_quality(ref, got)
        else:
            quality[k] = cnn_quality(ref, got)
    if labels is not None:
        pred = np.array([int(np.argmax(r)) for r in ref])
        quality["ort_fp32"] = {"accuracy_pct": round(100 * float(np.mean(pred == labels)), 2)}
    return quality


def _timing(name, feed, runs, ort_fp32, ort_int8, ort_int8_plain, fp32, int8s) -> dict:
    """Every runtime interleaved on one feed: latencies and the int8 ratios."""
    contestants = {
        "ort_fp32": lambda: ort_run(ort_fp32, feed),
        "ort_int8": lambda: ort_run(ort_int8, feed),
        "ort_int8_disable_all": lambda: ort_run(ort_int8_plain, feed),
        "graphopt_fp32": fp32.runner(feed),
        **{k: a.runner(feed) for k, a in int8s.items()},
    }
    _say(f"[{name}] timing {', '.join(contestants)} interleaved, {runs} runs")
    timings = interleaved(contestants, runs=runs, warmup=3)
    med = {k: t.median_ms for k, t in timings.items()}
    ratios: dict[str, Any] = {
        "ort_int8_speedup_over_ort_fp32": round(med["ort_fp32"] / med["ort_int8"], 2)
    }
    for k in int8s:
        ratios[k] = {
            "speedup_over_graphopt_fp32": round(med["graphopt_fp32"] / med[k], 2),
            "time_over_ort_int8": round(med[k] / med["ort_int8"], 2),
        }
    return {"latency": {k: t.to_json() for k, t in timings.items()}, "ratios": ratios}


def markdown(results: list[dict[str, Any]], machine: dict[str, Any], method: str) -> str:
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["model"], "failed: " + r["error"][:80], "", "", "", "", "", ""])
            continue
        qv, lat, ra = r["quality_vs_fp32"], r["latency"], r["ratios"]

        def q(k: str, qv: dict = qv) -> str:
            v = qv[k]
            if "accuracy_pct" in v:
                return f"{v['accuracy_pct']:.2f}%"
            if "min_cosine" in v:
                return f"min cos {v['min_cosine']:.4f}"
            return f"top1 {v['top1_agreement']}, top5 {v['fp32_top1_in_int8_top5']}" + (
                f", KL {v['mean_kl']:.3f}" if "mean_kl" in v else ""
            )

        for k in r["graphopt_quantization"]:
            info = r["graphopt_quantization"][k]
            label = r["model"] + (" (--max-drop)" if k.endswith("maxdrop") else "")
            kernels = "integer" if info["kernels"].startswith("integer") else "fake-quant"
            rows.append(
                [
                    f"{label}, {info['int8_layers']} int8, {kernels}",
                    q(k) + (f" (fp32 {q('graphopt_fp32')})" if r["model"] == "digits" else ""),
                    q("ort_int8") + " / " + q("ort_int8_disable_all"),
                    f"{lat['graphopt_fp32']['median_ms']:.2f} / {lat[k]['median_ms']:.2f} "
                    f"({ra[k]['speedup_over_graphopt_fp32']:.2f}x)",
                    f"{lat['ort_fp32']['median_ms']:.2f} / {lat['ort_int8']['median_ms']:.2f} "
                    f"({ra['ort_int8_speedup_over_ort_fp32']:.2f}x)",
                    f"{ra[k]['time_over_ort_int8']:.2f}x",
                    f"{r['weight_size_ratio'][k]:.3f}",
                    f"{r['library_size_ratio'][k]:.2f}",
                ]
            )
    header = [
        "model, graphopt int8 layers, kernels",
        "graphopt int8 quality vs fp32",
        "onnxruntime int8 vs fp32 (optimized / ORT_DISABLE_ALL)",
        "graphopt fp32 / int8 ms (speed-up)",
        "onnxruntime fp32 / int8 ms (speed-up)",
        "graphopt int8 time / ort int8",
        "graphopt int8 / fp32 weight bytes",
        "graphopt int8 / fp32 library size",
    ]
    return (
        _intro(machine, method)
        + format_table(header, rows)
        + "\n\n"
        + accuracy_table(results)
        + "\n\n"
        + time_table(results)
        + "\n\n"
        + weights_table(results)
        + "\n"
    )


METHOD_LABELS = {
    "graphopt_int8": "graphopt int8 (default flow)",
    "graphopt_int8_maxdrop": "graphopt int8 --max-drop",
    "ort_int8": "onnxruntime quantize_static (QDQ, per-channel)",
    "ort_int8_disable_all": "onnxruntime, ORT_DISABLE_ALL",
    "nncf_openvino_f32": "NNCF int8 PTQ on OpenVINO (f32 hint)",
}


def accuracy_table(results: list[dict[str, Any]]) -> str:
    """The CNNs on the photo split: each method against fp32, evaluation and validation."""
    rows = []
    for r in results:
        val = r.get("quality_validation")
        if not val:
            continue
        for k, label in METHOD_LABELS.items():
            e, v = r["quality_vs_fp32"].get(k), val.get(k)
            if e is None:
                continue
            info = r.get("graphopt_quantization", {}).get(k)
            if info:
                label += f" ({info['int8_layers']} int8)"
            rows.append(
                [
                    r["model"],
                    label,
                    e["top1_agreement"],
                    f"{e['mean_kl']:.4f}",
                    f"{e['min_cosine']:.4f}",
                    v["top1_agreement"],
                    f"{v['mean_kl']:.4f}",
                ]
            )
    header = [
        "model",
        "method",
        "top-1 agreement (evaluation)",
        "mean KL",
        "min logit cosine",
        "top-1 (validation)",
        "mean KL (validation)",
    ]
    return (
        "Accuracy against fp32 on the photo split (calibration, evaluation and validation "
        "photos disjoint; see `split` in int8.json):\n\n" + format_table(header, rows)
    )


def time_table(results: list[dict[str, Any]]) -> str:
    """graphopt's quantization time: calibration, sensitivity (build, per-layer rows, budget
    search), and the whole compile; NNCF's quantize call beside it."""
    rows = []
    for r in results:
        for k, info in r.get("graphopt_quantization", {}).items():
            sec = info.get("seconds", {})
            q, sens = sec.get("quantization", {}), sec.get("sensitivity", {})
            rows.append(
                [
                    r["model"],
                    k.removeprefix("graphopt_"),
                    f"{q.get('calibration', 0):.1f}",
                    "/".join(f"{sens.get(x, 0):.1f}" for x in ("build", "layers", "search")),
                    f"{q.get('calibration', 0) + q.get('sensitivity', 0):.1f}",
                    f"{info['compile_s']:.1f}",
                    f"{r.get('nncf_openvino', {}).get('quantize_s', float('nan')):.1f}",
                ]
            )
    header = [
        "model",
        "graphopt build",
        "calibration s",
        "sensitivity s (build / per-layer / search)",
        "calibration + sensitivity s",
        "whole compile s",
        "NNCF quantize s",
    ]
    return "Quantization time (a shared machine: see the load average above):\n\n" + format_table(
        header, rows
    )


def weights_table(results: list[dict[str, Any]]) -> str:
    """Where each artifact's weight bytes go (graphopt.sizes breakdown), fp32 and int8."""
    keys = ("int8", "int32 packed", "int32 vectors", "fp32 large", "fp32 small")
    rows = []
    for r in results:
        for k, w in r.get("weights", {}).items():
            parts = w["breakdown"]
            fp32_big = [f"{c['tensor']} {_mb(c['bytes'])}" for c in w["largest_fp32"]]
            rows.append(
                [
                    f"{r['model']} {k.removeprefix('graphopt_')}",
                    _mb(w["weight_bytes"]),
                    *(_mb(parts[key]) for key in keys),
                    _mb(w["code_bytes"]),
                    fp32_big[0] if fp32_big else "",
                ]
            )
    header = ["artifact", "weights", *keys, "code + metadata", "largest fp32 constant"]
    return (
        "Weight bytes (MB) by kind: int32 packed = the integer kernels' weight panels (int8 "
        "values in 32-bit words), int32 vectors = biases and zero-point corrections, fp32 "
        "small (< 64 KiB each) = scales, biases, norm parameters.\n\n" + format_table(header, rows)
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}"


def _intro(machine: dict[str, Any], method: str) -> str:
    return (
        "# int8: graphopt vs onnxruntime's quantizer and NNCF (OpenVINO)\n\n"
        f"{machine['cpu']} ({machine['llvm_cpu']}), {machine['threads']} threads, "
        f"{machine['date']}, load average {machine.get('load_average', '?')} at the start (a "
        "shared machine: read the ratios, not the absolute times); medians of interleaved runs "
        "in one process. "
        f"graphopt: static int8 for the CNNs (calibration method {method}), dynamic for MiniLM. "
        "Quality is against fp32 onnxruntime on real inputs (digits: labelled accuracy). "
        "See int8.json for the details, including graphopt's per-model kernels "
        "(integer or fake-quant).\n\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--method", default="mse")
    parser.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="CNNs: also build with --max-drop X (top-1 agreement on the calibration photos)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    env.configure_for_benchmarks()
    machine = machine_info()
    machine["load_average"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            d = Path(tmp) / name
            d.mkdir()
            try:
                results.append(bench_model(name, args.runs, d, args.method, args.max_drop))
            except Exception as err:  # noqa: BLE001 - a failing model is a result too
                traceback.print_exc()
                results.append({"model": name, "error": str(err).strip().splitlines()[0]})
            _say(json.dumps(results[-1], indent=1)[:3000])
    from bench.models.inputs import split_photos

    doc = {
        "machine": machine,
        "runs": args.runs,
        "method": args.method,
        "split": split_photos(),
        "results": results,
    }
    text = markdown(results, machine, args.method)
    write_results(args.out, "int8", doc, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
