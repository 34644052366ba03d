"""int4 weights on all-MiniLM-L6-v2: graphopt int4 (GPTQ and round-to-nearest) vs fp32, graphopt
int8 and onnxruntime's MatMulNBits.

    python -m bench.bench_int4 [--runs 50] [--rounds 4] [--group 32] [--no-timing]

- Quality: minimum and mean embedding cosine vs onnxruntime fp32 on the 24 evaluation
  sentences (bench/models/inputs.py); GPTQ calibrates on other sentences (CALIB below, none of
  them in the evaluation set).
- Size: the weight bytes each artifact carries (graphopt: its library's tensor constants,
  graphopt.sizes; onnxruntime: the initializers of its ONNX file), over fp32's.
- Latency: one runtime per process (/work/shared/PEERS.md): rounds of processes in alternating
  order (A B C .. then .. C B A), each process warm-up then the median of --runs runs of one
  sentence; per contestant the median over rounds, with the rounds' spread. 2 threads each.
- Contestants: graphopt fp32, int8 (dynamic, per row), int4 GPTQ and int4 RTN W4 x fp32 (the
  same format, embeddings int4), int4 GPTQ W4 x fp32 with `--max-drop` (per layer int4 or
  int8, budgeted on sentences neither calibration nor evaluation uses), the GPTQ and budget
  ones again as W4A8 (`--int4-activations int8`, inputs smoothed per layer, the default with
  calibration data) and GPTQ W4A8 without the smoothing; onnxruntime fp32 and MatMulNBits (block 32,
  symmetric, accuracy_level 4; its Gather stays fp32); that MatMulNBits model imported by
  graphopt (its weights as they are, on graphopt's int4 kernels); OpenVINO fp32 and NNCF's
  int4 weight compression (INT4_SYM, group 32) on OpenVINO, both with
  INFERENCE_PRECISION_HINT=f32, when openvino and nncf are installed (the bench extras).
Writes bench/results/int4.json and int4.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import graphopt
from bench.bench_int8 import CALIB_SENTENCES, cosine_quality
from bench.int4_cnn import MODELS as CNNS
from bench.int4_cnn import bench_cnn, cnn_table
from bench.writing import write_results
from graphopt import env
from graphopt.machine import machine_info
from graphopt.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = "2"
MIXED_MAX_DROP = 0.6  # min-cosine points: >= 0.99 on the BUDGET sentences

# More calibration sentences (disjoint from the evaluation SENTENCES): GPTQ's Hessians need
# more varied rows than 8 short sentences padded to 128 tokens give.
CALIB = [
    *CALIB_SENTENCES,
    "Farmers expect a good harvest if the dry weather continues into autumn.",
    "The software engineer fixed a memory leak in the database driver.",
    "Two children argued over who would sit next to the window on the bus.",
    "Our flight was cancelled, so we spent the night at an airport hotel.",
    "The documentary follows a family of elephants across the savanna.",
    "Please send me the updated spreadsheet before the meeting on Thursday.",
    "The old lighthouse has guided ships along this coast for two centuries.",
    "Researchers measured how quickly the glacier has retreated since 1950.",
    "I would like to return these shoes because they are too small.",
    "The chef added a pinch of salt and let the soup simmer for an hour.",
    "A violent storm knocked down power lines across the valley last night.",
    "The new policy requires employees to change their passwords every ninety days.",
    "He practised the piano every evening until his fingers ached.",
    "Tourists crowded the square to watch the changing of the guard.",
    "What is the difference between a virus and a bacterium?",
    "The team celebrated their victory with a parade through the city centre.",
    "Mortgage rates have climbed to their highest level in a decade.",
    "The volunteers planted two hundred trees along the riverbank.",
    "My grandmother still writes letters by hand to all her friends.",
    "The telescope captured images of a galaxy billions of light years away.",
    "Traffic on the motorway was backed up for miles after the accident.",
    "The novel's final chapter reveals the identity of the mysterious stranger.",
    "Students must submit their essays through the online portal by Friday.",
    "A gentle breeze carried the scent of pine through the open window.",
]

# What `--max-drop` scores (the budget variant): disjoint from CALIB (GPTQ fits those, so
# they flatter it: min cosine 0.996 there against 0.983 on the evaluation sentences) and from
# the evaluation SENTENCES.
BUDGET = [
    "The bakery on the corner sells out of croissants before nine.",
    "Scientists measured a sharp rise in ocean temperatures this summer.",
    "Please remember to water the plants while I am away.",
    "The museum reopened after a year of renovations to its roof.",
    "A stray cat has been sleeping on our porch for a week.",
    "Which train should I take to reach the airport before noon?",
    "The company reported higher profits despite rising energy costs.",
    "She repaired the old bicycle with parts from a scrapyard.",
    "Heavy snow closed the mountain pass for three days.",
    "The orchestra rehearsed the symphony late into the night.",
    "Vaccines train the immune system to recognise a pathogen.",
    "He lost his keys somewhere between the office and the gym.",
    "The city council voted to extend the cycle lane to the harbour.",
    "Fresh basil and tomatoes make a simple summer salad.",
    "The goalkeeper saved a penalty in the final minute.",
    "Our landlord promised to fix the heating before winter.",
]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ort_nbits(path: Path, dest: Path, block: int = 32) -> Path:
    """onnxruntime's int4 MatMulNBits model (block 32, symmetric, accuracy_level 4)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        onnx.load(str(path)), block_size=block, is_symmetric=True, accuracy_level=4
    )
    q.process()
    onnx.save(q.model.model, str(dest))
    return dest


OV_CONFIG = {
    "INFERENCE_NUM_THREADS": THREADS,
    "PERFORMANCE_HINT": "LATENCY",
    # exact fp32 for the float parts (on a CPU with AVX512_BF16 OpenVINO would pick bf16)
    "INFERENCE_PRECISION_HINT": "f32",
}


def _openvino_models(onnx_path: Path, workdir: Path, facts: dict) -> dict[str, Path]:
    """OpenVINO's fp32 model and NNCF's int4 weight compression of it (INT4_SYM, group 32,
    data-free: NNCF's defaults keep the embedding and a "backup" share of layers int8), as
    IR files; {} when openvino/nncf are not installed."""
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        facts["nncf_int4_openvino"] = {"skipped": f"not installed ({err})"}
        return {}
    model = ov.convert_model(str(onnx_path))
    fp32 = workdir / "openvino_fp32.xml"
    ov.save_model(model, str(fp32), compress_to_fp16=False)
    start = time.perf_counter()
    mode = nncf.CompressWeightsMode.INT4_SYM
    compressed = nncf.compress_weights(model, mode=mode, group_size=32)
    int4 = workdir / "nncf_int4_openvino.xml"
    ov.save_model(compressed, str(int4), compress_to_fp16=False)
    versions = {"openvino": ov.__version__, "nncf": nncf.__version__}
    facts["nncf_int4_openvino"] = {
        "quantize_s": round(time.perf_counter() - start, 1),
        "versions": versions,
    }
    return {"openvino_fp32": fp32, "nncf_int4_openvino": int4}


def _onnx_weight_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def _int4_variants(calib: Path, budget: Path, fmt: dict) -> dict[str, Any]:
    """graphopt's int4 contestants: GPTQ and RTN, W4 x fp32 and W4A8, alone and under the
    int4 / int8 budget (min cosine >= 0.99 on the BUDGET sentences; the evaluation sentences
    stay unseen)."""
    from graphopt.compress.int4.method import Int4Options

    gptq = {"calibration": str(calib), "samples": len(CALIB), **fmt}
    budgeted = {
        **gptq,
        "max_drop": MIXED_MAX_DROP,
        "metric": "min_cosine",
        "eval_data": str(budget),
    }
    rtn = {k: v for k, v in fmt.items() if k != "damp"}
    return {
        "graphopt_int4_gptq": Int4Options("gptq", activations="fp32", **gptq),
        # W4A8: rows quantized to int8 at run time, int8 dot products; with calibration data
        # the inputs are smoothed per layer first (the default, smooth.py), and without
        "graphopt_int4_gptq_w4a8": Int4Options("gptq", activations="int8", **gptq),
        "graphopt_int4_gptq_w4a8_unsmoothed": Int4Options(
            "gptq", activations="int8", smooth=False, **gptq
        ),
        "graphopt_int4_rtn": Int4Options("rtn", activations="fp32", **rtn),
        "graphopt_int4_int8_budget": Int4Options("gptq", activations="fp32", **budgeted),
        "graphopt_int4_int8_budget_w4a8": Int4Options("gptq", activations="int8", **budgeted),
    }


def _int4_facts(manifest: dict) -> dict[str, Any]:
    m = manifest["int4"]
    facts: dict[str, Any] = {"quantize_s": m["seconds"]["quantize"], "manifest_size": m["size"]}
    facts["settings"] = {
        k: m["settings"][k] for k in ("method", "group", "symmetric", "scale_dtype", "damp")
    }
    facts["layers_by_bits"] = {"4": m["int4_layers"], "8": m["int8_layers"]}
    alphas = {r["layer"]: r["smooth_alpha"] for r in m["layers"] if "smooth_alpha" in r}
    if alphas:
        facts["smooth_alpha"] = alphas
    if m.get("accuracy"):
        acc = m["accuracy"]
        facts["budget"] = {k: acc.get(k) for k in ("final", "artifact", "seconds")}
    facts["layer_output_mse"] = {
        r["layer"]: [r["rtn_mse"], r["mse"]] for r in m["layers"] if "mse" in r
    }
    return facts


def _sentence_files(workdir: Path) -> tuple[Path, Path]:
    """Calibration and budget sentences as tokenized .npz files."""
    from bench.models.inputs import tokenize

    files = []
    for name, sentences in (("calib", CALIB), ("budget", BUDGET)):
        tokens = [tokenize(s) for s in sentences]
        path = workdir / f"{name}.npz"
        np.savez(path, **{k: np.concatenate([t[k] for t in tokens]) for k in tokens[0]})
        files.append(path)
    return files[0], files[1]


def build(workdir: Path, fmt: dict) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every contestant's model or artifact path, and the compile facts (times, manifests)."""
    from bench.models.export import export
    from graphopt.compress.int4.method import Int4
    from graphopt.compress.int8.flow import QuantOptions

    onnx_path = export("minilm")
    calib, budget = _sentence_files(workdir)
    variants: dict[str, dict] = {
        "graphopt_fp32": {},
        "graphopt_int8": {"quantization": QuantOptions(mode="dynamic", granularity="row")},
        **{k: {"compression": [Int4(o)]} for k, o in _int4_variants(calib, budget, fmt).items()},
    }
    paths: dict[str, Path] = {"ort_fp32": onnx_path}
    facts: dict[str, Any] = {}
    for key, kw in variants.items():
        _say(f"[minilm] compile {key}")
        start = time.perf_counter()
        art = graphopt.compile(onnx_path, workdir / key, opt_level=2, progress=_say, **kw)
        facts[key] = {"compile_s": round(time.perf_counter() - start, 1)}
        if "int4" in art.manifest:
            facts[key].update(_int4_facts(art.manifest))
        paths[key] = workdir / key
    start = time.perf_counter()
    paths["ort_int4_matmulnbits"] = _ort_nbits(onnx_path, workdir / "ort_int4.onnx")
    facts["ort_int4_matmulnbits"] = {"quantize_s": round(time.perf_counter() - start, 1)}
    # the same MatMulNBits model imported by graphopt: its int4 weights on graphopt's kernels
    _say("[minilm] compile graphopt_import_matmulnbits")
    start = time.perf_counter()
    dest = workdir / "graphopt_import_matmulnbits"
    graphopt.compile(paths["ort_int4_matmulnbits"], dest, opt_level=2, progress=_say)
    facts["graphopt_import_matmulnbits"] = {"compile_s": round(time.perf_counter() - start, 1)}
    paths["graphopt_import_matmulnbits"] = dest
    _say("[minilm] OpenVINO fp32 and NNCF int4")
    paths.update(_openvino_models(onnx_path, workdir, facts))
    return paths, facts


def sizes(paths: dict[str, Path]) -> dict[str, Any]:
    """Weight bytes per contestant and their ratio to fp32 (each runtime's own fp32)."""
    from graphopt.sizes import library_weights

    out: dict[str, Any] = {}
    for key, path in paths.items():
        if key.startswith("graphopt"):
            n = library_weights(graphopt.load(path).library_path).weight_bytes
        elif path.suffix == ".xml":  # OpenVINO IR: the weights are the .bin file
            n = path.with_suffix(".bin").stat().st_size
        else:
            n = _onnx_weight_bytes(path)
        out[key] = {"weight_bytes": n}
    for key in out:
        own = "graphopt_fp32" if key.startswith("graphopt") else "ort_fp32"
        own = "openvino_fp32" if key in ("nncf_int4_openvino",) else own
        base = out[own]["weight_bytes"]
        out[key]["ratio"] = round(out[key]["weight_bytes"] / base, 4)
    return out


def _runner(key: str, path: Path):
    """A callable running one feed, for a contestant (2 threads)."""
    if key.startswith("graphopt"):
        art = graphopt.load(path)
        name = art.outputs[0].name
        return lambda feed: art.run(feed)[name]
    if path.suffix == ".xml":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", OV_CONFIG)
        request, output = compiled.create_infer_request(), compiled.output(0)
        return lambda feed: np.array(request.infer(dict(feed))[output])
    from graphopt.reference import ort_run, ort_session

    sess = ort_session(path, threads=int(THREADS))
    name = sess.get_outputs()[0].name
    return lambda feed: ort_run(sess, feed)[name]


def quality(paths: dict[str, Path]) -> dict[str, Any]:
    """Embedding cosine vs onnxruntime fp32 on the evaluation sentences."""
    from bench.models.inputs import sentence_batch

    feeds = sentence_batch(24)
    ref_run = _runner("ort_fp32", paths["ort_fp32"])
    ref = [ref_run(f) for f in feeds]
    out = {}
    for key, path in paths.items():
        run = _runner(key, path)
        out[key] = cosine_quality(ref, [run(f) for f in feeds])
    return out


def time_one(key: str, path: Path, runs: int) -> dict[str, float]:
    """In this process only: warm-up, then `runs` timed runs of one sentence."""
    from bench.models.inputs import sentence_batch
    from bench.worker import time_calls

    feed = sentence_batch(1)[0]
    run = _runner(key, path)
    samples = json.loads(time_calls(lambda: run(feed), runs, warmup=5))["ms"]
    return {"median_ms": statistics.median(samples), "min_ms": min(samples)}


def latency(paths: dict[str, Path], runs: int, rounds: int) -> dict[str, Any]:
    """Each contestant in its own process, rounds in alternating order; medians over rounds."""
    env_vars = {**os.environ, env.NUM_THREADS.name: THREADS}
    keys = list(paths)
    got: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            cmd = [sys.executable, "-m", "bench.bench_int4", "--time-one", key, str(paths[key])]
            proc = subprocess.run(
                [*cmd, "--runs", str(runs)], env=env_vars, capture_output=True, text=True
            )
            if proc.returncode:
                raise RuntimeError(f"timing {key} failed: {proc.stderr.strip()[-500:]}")
            got[key].append(json.loads(proc.stdout.strip().splitlines()[-1])["median_ms"])
            _say(f"[minilm] round {r + 1}/{rounds} {key}: {got[key][-1]:.2f} ms")
    return {
        k: {
            "median_ms": round(statistics.median(v), 3),
            "rounds_ms": [round(x, 3) for x in v],
        }
        for k, v in got.items()
    }


def _matmul_model(k: int, n: int):
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(0).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemv(workdir: Path, fmt: dict, runs: int) -> list[dict[str, Any]]:
    """Batch-1 matmuls alone (one-MatMul models, graphopt only, interleaved in one process):
    fp32, int8 (dynamic) and int4 artifacts, and the int4 weights' bytes per second."""
    from graphopt.compress.int4.method import Int4, Int4Options
    from graphopt.compress.int8.flow import QuantOptions
    from graphopt.sizes import library_weights
    from graphopt.timing import interleaved

    rows = []
    rtn = {k: v for k, v in fmt.items() if k != "damp"}
    for k, n in ((384, 1536), (1536, 384), (4096, 4096)):
        model = _matmul_model(k, n)
        kinds = {
            "fp32": {},
            "int8": {"quantization": QuantOptions(mode="dynamic", granularity="row")},
            "int4": {"compression": [Int4(Int4Options("rtn", activations="fp32", **rtn))]},
            "int4_w4a8": {"compression": [Int4(Int4Options("rtn", activations="int8", **rtn))]},
        }
        arts = {
            name: graphopt.compile(model, workdir / f"gemv_{k}_{n}_{name}", **kw)
            for name, kw in kinds.items()
        }
        feed = {"x": np.ones((1, k), np.float32)}
        t = interleaved({name: a.runner(feed) for name, a in arts.items()}, runs=runs, warmup=5)
        ms = {name: round(v.median_ms, 4) for name, v in t.items()}
        nbytes = library_weights(arts["int4"].library_path).weight_bytes
        rows.append(
            {
                "k": k,
                "n": n,
                "ms": ms,
                "int4_weight_bytes": nbytes,
                "int4_GBps": round(nbytes / ms["int4"] / 1e6, 2),
                "int4_w4a8_GBps": round(nbytes / ms["int4_w4a8"] / 1e6, 2),
                "fp32_GBps": round(k * n * 4 / ms["fp32"] / 1e6, 2),
            }
        )
        _say(f"[gemv] {k}x{n}: {ms}")
    return rows


def _notes(doc: dict[str, Any]) -> list[str]:
    """The budget variant's decision and GPTQ's per-layer error reduction, in sentences."""
    lines = []
    mixed = doc["facts"].get("graphopt_int4_int8_budget", {})
    if mixed.get("layers_by_bits"):
        b, budget = mixed["layers_by_bits"], mixed.get("budget", {})
        lines += [
            f"graphopt_int4_int8_budget: `--max-drop {doc.get('mixed_max_drop')}` on min cosine "
            f"over {len(BUDGET)} other sentences kept {b['8']} of {b['4'] + b['8']} matmuls int8 "
            f"(the rest int4); its score there {budget.get('final')}, the artifact's "
            f"{budget.get('artifact')}.",
            "",
        ]
    errs = doc["facts"].get("graphopt_int4_gptq", {}).get("layer_output_mse", {})
    if errs:
        rtn = float(np.mean([v[0] for v in errs.values()]))
        gptq = float(np.mean([v[1] for v in errs.values()]))
        lines += [
            f"Per-layer output MSE on the calibration inputs, mean over {len(errs)} layers: "
            f"plain rounding {rtn:.3g}, GPTQ {gptq:.3g} ({rtn / gptq:.1f}x lower).",
            "",
        ]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# int4 weights: all-MiniLM-L6-v2, MobileNetV2, EfficientNet-Lite0",
        "",
        f"Machine: {m.get('cpu', '?')}, load {m.get('load_average', '?')}; 2 threads per "
        f"runtime, one process each, {doc['rounds']} rounds x {doc['runs']} runs "
        "(`python -m bench.bench_int4`).",
        "",
    ]
    if "contestants" in doc:
        lines += _minilm_markdown(doc)
    if doc.get("cnn"):
        lines += ["", *cnn_table(doc["cnn"])]
    return "\n".join(lines) + "\n"


def _minilm_markdown(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lat, q, size, facts = doc["latency"], doc["quality"], doc["sizes"], doc["facts"]
    base = lat.get("graphopt_int8", {}).get("median_ms")
    rows = []
    for key in doc["contestants"]:
        t = lat.get(key, {}).get("median_ms")
        rows.append(
            [
                key,
                q[key]["min_cosine"],
                q[key]["mean_cosine"],
                size[key]["ratio"],
                t if t is not None else "-",
                round(t / base, 2) if t and base else "-",
                facts.get(key, {}).get("quantize_s", "-"),
                facts.get(key, {}).get("compile_s", "-"),
            ]
        )
    cols = [
        "contestant",
        "min cosine",
        "mean cosine",
        "weights vs fp32",
        "latency ms",
        "vs graphopt int8",
        "quantize s",
        "compile s",
    ]
    f = doc["int4_format"]
    lines += [
        f"int4: group {f['group']}, {'symmetric' if f['symmetric'] else 'asymmetric'}, "
        f"{f['scale_dtype']} scales, GPTQ damp {f['damp']}, embeddings int4 (group "
        f"{f['embedding_group']}); latency: median "
        "over rounds of each process's median; weights: tensor bytes in the artifact / model.",
        "",
        format_table(cols, rows),
        "",
    ]
    lines += _notes(doc)
    if not doc["gemv"]:
        return lines
    lines.append("Batch-1 matmuls alone (graphopt artifacts of one MatMul, medians, ms):")
    lines.append("")
    g = [
        [
            f"{r['k']}x{r['n']}",
            r["ms"]["fp32"],
            r["ms"]["int8"],
            r["ms"]["int4"],
            r["ms"].get("int4_w4a8", "-"),
            r["int4_GBps"],
            r.get("int4_w4a8_GBps", "-"),
            r["fp32_GBps"],
        ]
        for r in doc["gemv"]
    ]
    cols = ["K x N", "fp32", "int8", "int4 W4 x fp32", "int4 W4A8", "W4 x fp32 GB/s"]
    lines.append(format_table([*cols, "W4A8 GB/s", "fp32 GB/s"], g))
    return lines


def _minilm(doc: dict[str, Any], workdir: Path, args: argparse.Namespace, timed: bool) -> None:
    """MiniLM's contestants: quality, sizes, latency and the batch-1 matmuls, into `doc`."""
    fmt = {
        "group": args.group,
        "symmetric": args.symmetric,
        "scale_dtype": args.scale_dtype,
        "damp": args.damp,
        "embedding_group": args.embedding_group,
    }
    paths, facts = build(workdir, fmt)
    doc.update(int4_format=fmt, mixed_max_drop=MIXED_MAX_DROP)
    doc.update(contestants=list(paths), facts=facts, sizes=sizes(paths))
    doc["quality"] = quality(paths)
    _say(json.dumps(doc["quality"]))
    doc["latency"] = latency(paths, args.runs, args.rounds) if timed else {}
    doc["gemv"] = gemv(workdir, fmt, args.runs) if timed else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--models", default=",".join(("minilm", *CNNS)))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--scale-dtype", default="float16")
    parser.add_argument("--damp", type=float, default=0.1)
    parser.add_argument("--embedding-group", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-timing",
        action="store_true",
        help="accuracy and sizes only (a loaded machine); writes int4_quality.json / .md",
    )
    parser.add_argument("--time-one", nargs=2, metavar=("KEY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    env.configure_for_benchmarks()
    if args.time_one:
        print(json.dumps(time_one(args.time_one[0], Path(args.time_one[1]), args.runs)))
        return 0
    os.environ[env.NUM_THREADS.name] = THREADS
    machine = machine_info()
    machine["load_average"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    models = args.models.split(",")
    timed = not args.no_timing
    doc: dict[str, Any] = {"machine": machine, "runs": args.runs, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        if "minilm" in models:
            _minilm(doc, Path(tmp), args, timed)
        doc["cnn"] = [
            bench_cnn(name, Path(tmp), timed, args.runs, _say) for name in models if name in CNNS
        ]
    text = markdown(doc)
    write_results(args.out, "int4" if timed else "int4_quality", doc, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
