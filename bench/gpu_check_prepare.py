"""Build the CUDA device check's cases here (no GPU; needs nvcc), for one call on a GPU host.

    python bench/gpu_check_prepare.py build/gpu_check [--group fp16] [--arch sm_90]

A lent GPU machine takes at most 64 MiB of files per call and runs a call for at most 10
minutes, so the cases come in groups that each fit one call (MAX_CARRY_MIB, checked: the
script stops with an error when a group outgrows it):

    fp16 (default)  MobileNetV2 and EfficientNet-Lite0 at batch 1 and 32, generated blocks
    bf16            the same in bf16
    fp32            MobileNetV2 and EfficientNet-Lite0 at batch 1, generated blocks
    fp32-b32        MobileNetV2 and EfficientNet-Lite0 at batch 32
    minilm          all-MiniLM-L6-v2 (sequence 128) in fp16 and bf16
    minilm-fp32     all-MiniLM-L6-v2 in fp32
    blocks          the generated MobileNet and transformer blocks in all three precisions
    int8            MobileNetV2 (batch 8) and all-MiniLM-L6-v2 with --quantize int8 (dp4a)

The directory holds the runner and the TVM / CUDA runtime libraries once (`run`, `lib/`), per
case `model.so`, `io.txt` and `manifest.json`, per model and batch `models/<key>.onnx` (the
graph without its large weights, bench/onnx_skeleton.py: PyTorch and onnxruntime CUDA time it
with random weights of the same shapes) and `refs/<key>.npz` (onnxruntime CPU fp32 outputs of
the real model for the inputs `gpu_check.make_inputs` draws, computed here), and `cases.json`.
int8 cases are calibrated on `make_inputs` draws with other seeds than the checked inputs
(static for the CNN, dynamic per-row for MiniLM, as docs/INT8.md does them), and carry a
second reference, `refs/<case>-cpu.npz`: the same quantization built for this CPU and run on
the checked inputs (the integer arithmetic is exact on both, so the GPU must give its numbers;
against fp32, random inputs make near-tied logits and top-1 flips mean little). The models'
weights travel only inside graphopt's libraries. MiniLM's word-embedding table
is cut to its first VOCAB rows (47 MB of 90; inputs draw token ids below VOCAB): the same
graph, a smaller constant. Batch 32 copies of the batch-1 CNNs get their batch axis widened
(`rebatch`), checked here against the batch-1 model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

MAX_CARRY_MIB = 60
VOCAB = 2048
CNNS = ("mobilenet_v2", "efficientnet_lite0")
BLOCKS = ("mobilenet_block", "transformer_block")
GROUPS: dict[str, list[tuple[str, int, str]]] = {
    "fp16": [(m, b, "fp16") for m in CNNS for b in (1, 32)] + [(m, 1, "fp16") for m in BLOCKS],
    "bf16": [(m, b, "bf16") for m in CNNS for b in (1, 32)] + [(m, 1, "bf16") for m in BLOCKS],
    "fp32": [(m, 1, "fp32") for m in (*CNNS, *BLOCKS)],
    "fp32-b32": [(m, 32, "fp32") for m in CNNS],
    "minilm": [("minilm", 1, "fp16"), ("minilm", 1, "bf16")],
    "minilm-fp32": [("minilm", 1, "fp32")],
    "blocks": [(m, 1, p) for m in BLOCKS for p in ("fp32", "fp16", "bf16")],
    "int8": [("mobilenet_v2", 8, "int8"), ("minilm", 1, "int8")],
}
CALIB_SEEDS = range(1, 5)  # calibration draws; the checked inputs are seed 0


def load_model(name: str, batch: int):
    """The ONNX model of a case, as compiled and as the reference runs it."""
    import onnx

    from graphopt import env

    if name in BLOCKS:
        import model_builders as mb

        return getattr(mb, name)()
    model = onnx.load(str(env.cache_dir() / "models" / f"{name}.onnx"))
    if name == "minilm":
        model = cut_vocabulary(model, VOCAB)
    return rebatch(model, batch) if batch != 1 else model


def cut_vocabulary(model, rows: int):
    """The embedding tables gathered by a graph input keep their first `rows` rows."""
    from onnx import numpy_helper

    graph_inputs = {i.name for i in model.graph.input}
    gathered = {
        n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[1] in graph_inputs
    }
    for i, init in enumerate(model.graph.initializer):
        if init.name in gathered and init.dims[0] > rows:
            table = numpy_helper.to_array(init)[:rows]
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(table, init.name))
    return model


def rebatch(model, batch: int):
    """A batch-1 model with its inputs' first axis set to `batch`; Reshape shapes that start
    with 1 start with 0 (copy the batch) instead."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    shapes = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
    tensors = [t for t in graph.initializer if t.name in shapes]
    tensors += [
        n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.output[0] in shapes
    ]
    for tensor in tensors:
        value = numpy_helper.to_array(tensor)
        if value.ndim == 1 and len(value) >= 2 and value[0] == 1:
            tensor.CopyFrom(numpy_helper.from_array(np.concatenate([[0], value[1:]]), tensor.name))
    initializers = {t.name for t in graph.initializer}
    for value_info in [*graph.input, *graph.output]:
        if value_info.name not in initializers:
            value_info.type.tensor_type.shape.dim[0].dim_value = batch
    del graph.value_info[:]
    return model


def _reference(model, case_dir: Path, name: str, batch: int, seed: int) -> dict:
    """onnxruntime CPU fp32 outputs, keyed by io.txt's output names; a widened batch is
    checked against the batch-1 model on its first sample."""
    import onnxruntime as ort
    from gpu_check import io_spec, make_inputs

    inputs, outputs = io_spec(case_dir)
    feeds = make_inputs(inputs, seed, VOCAB)
    run = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run
    ref = dict(zip(outputs, run(None, feeds)))
    if batch > 1:
        single = load_model(name, 1).SerializeToString()
        one = ort.InferenceSession(single, providers=["CPUExecutionProvider"]).run(
            None, {k: v[:1] for k, v in feeds.items()}
        )
        for (out, got), want in zip(ref.items(), one):
            if not np.allclose(got[:1], want, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"error: rebatch changed {name}'s output {out}")
    return ref


def _quantization(model, name: str, directory: Path):
    """--quantize int8 options for a case, calibrated on seeded draws (not the checked ones):
    static for CNNs, dynamic per-row for transformers."""
    from gpu_check import make_inputs

    from graphopt.compress.int8.flow import QuantOptions

    kinds = {1: "<f4", 7: "<i8", 6: "<i4"}
    specs = [
        (i.name, kinds[i.type.tensor_type.elem_type],
         tuple(d.dim_value for d in i.type.tensor_type.shape.dim))
        for i in model.graph.input
    ]  # fmt: skip
    draws = [make_inputs(specs, seed, VOCAB) for seed in CALIB_SEEDS]
    path = directory / f"{name}-calibration.npz"
    np.savez(path, **{k: np.concatenate([d[k] for d in draws]) for k in draws[0]})
    if name == "minilm":
        return QuantOptions(str(path), mode="dynamic", granularity="row", sensitivity=False)
    return QuantOptions(str(path), sensitivity=False)


def _cpu_int8_reference(out: Path, model, quant, case: str) -> str:
    """refs/<case>-cpu.npz: the int8 model built for this host, run on the checked inputs."""
    from gpu_check import io_spec, make_inputs

    import graphopt
    from graphopt.target_infra import host_target

    host = host_target().name
    art = graphopt.compile(
        model, out / ".bundles" / f"{case}-{host}", target=host, quantization=quant
    )
    inputs, _ = io_spec(out / case)
    outputs = art.run(make_inputs(inputs, 0, VOCAB))
    path = f"refs/{case}-cpu.npz"
    np.savez(out / path, **{k: np.asarray(v) for k, v in outputs.items()})
    return path


def _bundle_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _write_model(out: Path, key: str, model, case_dir: Path, name: str, batch: int) -> None:
    """models/<key>.onnx (weights stripped, after the frontend's clean-up, which folds the
    shape sub-graphs bench/onnx_torch.py cannot run) and refs/<key>.npz, once per key."""
    import onnx
    from onnx_skeleton import strip

    from graphopt.frontend.cleanup import clean_for_import

    path = out / "models" / f"{key}.onnx"
    if path.is_file():
        return
    path.parent.mkdir(exist_ok=True)
    onnx.save(strip(clean_for_import(model)), str(path))
    (out / "refs").mkdir(exist_ok=True)
    np.savez(out / "refs" / f"{key}.npz", **_reference(model, case_dir, name, batch, seed=0))


def _build_case(out: Path, name: str, batch: int, precision: str, arch: str) -> dict:
    import graphopt

    key, case = f"{name}-b{batch}", f"{name}-b{batch}-{precision}"
    model = load_model(name, batch)
    full = out / ".bundles" / case
    int8 = precision == "int8"
    quant = _quantization(model, name, out) if int8 else None
    start = time.perf_counter()
    art = graphopt.compile(
        model,
        full,
        target="cuda",
        target_options={"arch": arch, "precision": "fp32" if int8 else precision},
        quantization=quant,
    )
    seconds = time.perf_counter() - start
    if not (out / "run").is_file():  # runner and libraries once for every case
        shutil.copy2(full / "run", out / "run")
        shutil.copytree(full / "lib", out / "lib", dirs_exist_ok=True)
    dest = out / case
    dest.mkdir(exist_ok=True)
    for item in ("model.so", "io.txt", "manifest.json"):
        shutil.copy2(full / item, dest / item)
    _write_model(out, key, model, dest, name, batch)
    cpu_int8 = _cpu_int8_reference(out, model, quant, case) if int8 else None
    stats = next(
        r["stats"] for r in art.manifest["report"]["passes"] if r["pass"] == "schedule-cuda"
    )
    print(f"{case}: {seconds:.0f} s, bundle {_bundle_size(full) / 2**20:.1f} MiB", flush=True)
    return {
        "case": case,
        "onnx": f"models/{key}.onnx",
        "reference": f"refs/{key}.npz",
        "precision": precision,
        "classifier": name in CNNS,  # top-1 agreement is checked for ImageNet logits only
        "vocab": VOCAB,
        "compile_seconds": round(seconds, 1),
        "bundle_bytes": _bundle_size(full),
        "rules": {k[10:]: v for k, v in stats.items() if k.startswith("scheduled_") and v},
        **({"cpu_int8_reference": cpu_int8} if cpu_int8 else {}),
    }


def prepare(out: Path, arch: str, group: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    listed = [_build_case(out, *case, arch) for case in GROUPS[group]]
    shutil.rmtree(out / ".bundles")
    for calibration in out.glob("*-calibration.npz"):
        calibration.unlink()
    (out / "cases.json").write_text(json.dumps(listed, indent=2) + "\n")
    return listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--group", default="fp16", choices=sorted(GROUPS))
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty (one group per directory)", file=sys.stderr)
        return 2
    prepare(args.out, args.arch, args.group)
    mib = _bundle_size(args.out) / 2**20
    print(f"{args.out}: {mib:.1f} MiB to carry")
    if mib > MAX_CARRY_MIB:
        print(f"error: group {args.group} is {mib:.0f} MiB, over {MAX_CARRY_MIB}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
