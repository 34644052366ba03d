"""The CNN rows of bench_int4: MobileNetV2 and EfficientNet-Lite0 with int4 1x1 convs.

On the photo split of the int8 bench (bench/models/inputs.py `split_crops`: calibration,
evaluation and validation photos disjoint): GPTQ calibrated on the calibration crops, the
`--max-drop` budget scored on them too (top-1 agreement with fp32, as bench_int8's --max-drop
rows), quality measured on the evaluation and validation crops against onnxruntime fp32.
Contestants: graphopt fp32, graphopt int8 (the default static flow of bench_int8, every layer
int8), int4 W4A8 with every 1x1 conv and the classifier int4 (the classifier's input smoothed,
smooth.py): GPTQ with the depthwise and stem convs fp32 (the default) or int8
(`--int4-windows int8`, as every row after it), AdaRound (`--int4-method adaround`), and AdaRound
under a size cap (`--int4-max-size`: the layers the ladder moves off int4, by output noise per
byte, run int8: a 1x1 conv as the dynamic per-row int8 matmul of its pixels). Weights:
tensor bytes in the library (graphopt.sizes) over fp32's. Latency (timed runs only):
interleaved medians in one process, vs graphopt int8.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

import graphopt

MODELS = ("mobilenet_v2", "efficientnet_lite0")
CNN_MAX_SIZE = 0.163  # --int4-max-size: quantized layers' bytes over fp32 (library ~0.17x)
INT4_FORMAT = {"group": 32, "symmetric": True, "scale_dtype": "float16"}


def _variants(calib: Path, int8_quant) -> dict[str, dict]:
    from graphopt.compress.int4.method import Int4, Int4Options

    def int4(**kw) -> dict:
        opts = Int4Options(
            calibration=str(calib), samples=32, activations="int8", **INT4_FORMAT, **kw
        )
        return {"compression": [Int4(opts)]}

    budget = {"max_size": CNN_MAX_SIZE, "metric": "top1_agreement", "eval_data": str(calib)}
    int8_windows = {"windows": "int8"}  # depthwise and stem convs: int8 weights
    return {
        "graphopt_fp32": {},
        "graphopt_int8": {"quantization": int8_quant},
        "graphopt_int4_gptq_fp32_windows": int4(method="gptq", windows="fp32"),
        "graphopt_int4_gptq": int4(method="gptq", **int8_windows),
        "graphopt_int4_adaround": int4(method="adaround", **int8_windows),
        # layers to int8 by output noise per byte while the size cap holds
        "graphopt_int4_adaround_max_size": int4(method="adaround", **int8_windows, **budget),
    }


def _outputs(art, feeds) -> list[np.ndarray]:
    name = art.outputs[0].name
    return [art.run(f)[name] for f in feeds]


def bench_cnn(name: str, workdir: Path, timed: bool, runs: int, say) -> dict[str, Any]:
    """One model's rows: quality on both held-out roles, weights, facts, latency."""
    from bench.bench_int8 import cnn_quality, model_data
    from bench.models.inputs import split_crops
    from graphopt.reference import ort_run, ort_session
    from graphopt.sizes import library_weights

    entry: dict[str, Any] = {"model": name}
    path, _feeds, _labels, calib, quant = model_data(name, workdir, "mse", None, entry)
    entry.pop("validation_feeds", None)  # arrays (bench_int8's): not for the results' JSON
    calib_path = workdir / f"{name}_calib.npz"
    np.savez(calib_path, **calib)
    quant = dataclasses.replace(quant, calibration=str(calib_path), speed_check=False)
    roles = {r: [{"input": x} for _, x in split_crops(r)] for r in ("evaluation", "validation")}
    sess = ort_session(path, threads=2)
    out_name = sess.get_outputs()[0].name
    ref = {r: [ort_run(sess, f)[out_name] for f in fs] for r, fs in roles.items()}
    arts, facts = {}, {}
    for key, kw in _variants(calib_path, quant).items():
        say(f"[{name}] compile {key}")
        start = time.perf_counter()
        arts[key] = graphopt.compile(path, workdir / f"{name}-{key}", opt_level=2, **kw)
        facts[key] = {"compile_s": round(time.perf_counter() - start, 1)}
        m = arts[key].manifest.get("int4")
        if m:
            facts[key]["layers_by_bits"] = _bits(m)
            facts[key]["manifest_size"] = m["size"]
            if m.get("accuracy"):
                acc = m["accuracy"]
                keys = ("fp32", "final", "artifact")
                facts[key]["budget"] = {k: _number(acc.get(k)) for k in keys}
    fp32_w = library_weights(arts["graphopt_fp32"].library_path).weight_bytes
    entry["weights_ratio"] = {
        k: round(library_weights(a.library_path).weight_bytes / fp32_w, 4) for k, a in arts.items()
    }
    entry["quality"] = {
        k: {r: cnn_quality(ref[r], _outputs(a, roles[r])) for r in roles} for k, a in arts.items()
    }
    entry["facts"] = facts
    if timed:
        from graphopt.timing import interleaved

        feed = roles["evaluation"][0]
        t = interleaved({k: a.runner(feed) for k, a in arts.items()}, runs=runs, warmup=5)
        entry["latency_ms"] = {k: round(v.median_ms, 3) for k, v in t.items()}
    say(f"[{name}] {entry['quality']} {entry['weights_ratio']}")
    return entry


def _number(v) -> float | None:
    """A score as a plain float (the artifact check's may be a numpy scalar)."""
    return None if v is None else float(v)


def _bits(m: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in m["layers"]:
        out[str(r["bits"])] = out.get(str(r["bits"]), 0) + 1
    return out


def cnn_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per model and contestant, top-1 agreement, weights, latency."""
    from graphopt.tables import format_table

    lines = [
        "CNNs (photo split of bench_int8; int4 group 32, symmetric, fp16 scales, GPTQ or "
        f"AdaRound on the calibration crops; budget: --int4-max-size {CNN_MAX_SIZE}, layers "
        "ranked on them):",
        "",
    ]
    table = []
    for e in rows:
        lat = e.get("latency_ms", {})
        base = lat.get("graphopt_int8")
        for key, q in e["quality"].items():
            bits = e["facts"].get(key, {}).get("layers_by_bits", "-")
            t = lat.get(key)
            table.append(
                [
                    e["model"],
                    key,
                    q["evaluation"]["top1_agreement"],
                    q["validation"]["top1_agreement"],
                    e["weights_ratio"][key],
                    e["facts"].get(key, {}).get("compile_s", "-"),
                    bits,
                    t if t is not None else "-",
                    round(t / base, 2) if t and base else "-",
                ]
            )
    cols = ["model", "contestant", "top-1 agree (eval)", "top-1 agree (valid)", "weights"]
    cols.append("compile s")
    lines.append(format_table([*cols, "layers by bits", "latency ms", "vs int8"], table))
    return lines
