"""The CUDA device check, run on a GPU host (no TVM, no graphopt there): graphopt's bundles
against onnxruntime CPU fp32 for correctness, and against PyTorch (eager, torch.compile) and
onnxruntime's CUDA provider (when installed) for speed, on the same GPU.

    python3 bench/gpu_check.py CHECK_DIR [--out RESULTS_DIR] [--runs 50] [--no-compile]

CHECK_DIR comes from bench/gpu_check_prepare.py, which computed the onnxruntime CPU fp32
references on the build machine for the inputs `make_inputs` draws (seeded: the same arrays
here and there). Pass criteria: fp32 max relative error <= 1e-3 (max |graphopt - ort| /
max |ort|); fp16 cosine >= 0.999, bf16 cosine >= 0.99 (3 fewer mantissa bits), and for
classifiers the same top-1 class on every sample; int8 (quantized, calibrated on other draws)
cosine >= 0.98 against fp32 (top-1 agreement reported), and the numbers of the same int8
model built for the build machine's CPU: max relative error <= 1e-3 and the same top-1 class
on every sample (integer arithmetic is exact on both; only fp32 epilogues may round apart).
Times are medians of `--runs` calls with inputs already on the GPU; graphopt's comes from
the C++ runner (`run --repeat`), synchronized after each call; PyTorch and onnxruntime CUDA
run the carried graph with random weights of the real shapes (bench/onnx_skeleton.py).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FP32_REL = 1e-3
COSINE = {"fp16": 0.999, "bf16": 0.99, "int8": 0.98}
DTYPES = {"<f4": np.float32, "<i8": np.int64, "<i4": np.int32}


def io_spec(case_dir: Path) -> tuple[list[tuple], list[str]]:
    inputs, outputs = [], []
    for line in (case_dir / "io.txt").read_text().splitlines():
        parts = line.split()
        if parts[0] == "input":
            ndim = int(parts[2])
            inputs.append((parts[-1], parts[1], tuple(int(d) for d in parts[3 : 3 + ndim])))
        elif parts[0] == "output":
            outputs.append(parts[-1])
    return inputs, outputs


def make_inputs(inputs: list[tuple], seed: int = 0, vocab: int = 1000) -> dict[str, np.ndarray]:
    """Seeded inputs (numpy's generator gives the same arrays on every machine): normal
    floats, token ids below `vocab`, all-ones attention masks, zero token types."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, descr, shape in inputs:
        dtype = DTYPES[descr]
        if name == "mask":  # the transformer block's additive causal mask
            seq = shape[-1]
            out[name] = np.broadcast_to(np.triu(np.full((seq, seq), -1e4), 1), shape).astype(dtype)
        elif dtype == np.float32:
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in name:
            out[name] = np.ones(shape, dtype)
        elif "type" in name:
            out[name] = np.zeros(shape, dtype)
        else:
            out[name] = rng.integers(0, vocab, shape).astype(dtype)
    return out


def run_bundle(root: Path, case_dir: Path, feeds: dict, runs: int) -> tuple[dict, float | None]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **feeds)
        cmd = [str(root / "run"), str(case_dir / "model.so"), str(src), str(dst)]
        proc = subprocess.run([*cmd, "--repeat", str(runs)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"runner failed: {proc.stderr.strip()[-500:]}")
        found = re.search(r"median ([0-9.]+) ms", proc.stderr)
        with np.load(dst) as result:
            return {k: result[k] for k in result.files}, float(found[1]) if found else None


def compare(ours: np.ndarray, ref: np.ndarray, precision: str) -> dict:
    ours, ref = ours.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    rel = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
    cosine = float(ours @ ref / max(np.linalg.norm(ours) * np.linalg.norm(ref), 1e-30))
    ok = rel <= FP32_REL if precision == "fp32" else cosine >= COSINE[precision]
    return {"max_rel_err": rel, "cosine": cosine, "ok": bool(ok)}


def top1(ours: np.ndarray, ref: np.ndarray) -> float | None:
    """The share of samples whose top-1 class is the reference's (classifiers only)."""
    if ours.ndim != 2 or ours.shape[-1] < 100:
        return None
    return float((ours.argmax(-1) == ref.argmax(-1)).mean())


def same_as_cpu_int8(ours: dict, path: Path) -> dict:
    """The GPU's int8 outputs against the CPU build of the same int8 model."""
    out = {}
    with np.load(path) as cpu:
        for name in cpu.files:
            result = compare(ours[name], cpu[name], "fp32")
            if (share := top1(ours[name], cpu[name])) is not None:
                result["top1_agreement"] = share
                result["ok"] = result["ok"] and share == 1.0
            out[name] = result
    return out


def time_calls(fn, runs: int, sync) -> float:
    for _ in range(5):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def load_graph(onnx_path: Path):
    """The carried graph with random weights of its real shapes (bench/onnx_skeleton.py)."""
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from onnx_skeleton import restore

    return restore(onnx.load(str(onnx_path)))


def time_torch(onnx_path: Path, feeds: dict, precision: str, runs: int, compile_: bool) -> dict:
    """PyTorch eager and torch.compile on the same graph (bench/onnx_torch.py), in ms."""
    import torch
    from onnx_torch import OnnxModule

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    module = OnnxModule(load_graph(onnx_path)).cuda().eval()
    if dtype != torch.float32:
        module = module.to(dtype)
        module.float_dtype = dtype
    args = [torch.from_numpy(feeds[n]).cuda() for n in module.inputs]
    args = [a.to(dtype) if a.is_floating_point() else a for a in args]
    out = {}
    with torch.inference_mode():
        out["torch_eager_ms"] = time_calls(lambda: module(*args), runs, torch.cuda.synchronize)
        if compile_:
            start = time.perf_counter()
            compiled = torch.compile(module)
            compiled(*args)
            out["torch_compile_seconds"] = round(time.perf_counter() - start, 1)
            out["torch_compile_ms"] = time_calls(
                lambda: compiled(*args), runs, torch.cuda.synchronize
            )
    return out


def time_ort_cuda(onnx_path: Path, feeds: dict, runs: int) -> dict:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {}
    model = load_graph(onnx_path).SerializeToString()
    sess = ort.InferenceSession(model, providers=["CUDAExecutionProvider"])
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda")
    return {"ort_cuda_ms": time_calls(lambda: sess.run_with_iobinding(binding), runs, lambda: None)}


def check_case(root: Path, entry: dict, args) -> dict:
    case_dir, onnx_path = root / entry["case"], root / entry["onnx"]
    inputs, outputs = io_spec(case_dir)
    feeds = make_inputs(inputs, 0, entry.get("vocab", 1000))
    with np.load(root / entry["reference"]) as refs:
        ref = [refs[name] for name in outputs]
    ours, ms = run_bundle(root, case_dir, feeds, args.runs)
    row: dict = {"case": entry["case"], "graphopt_ms": ms, "outputs": {}}
    for name, expected in zip(outputs, ref):
        got = ours[name]
        result = compare(got, expected, entry["precision"])
        share = top1(got, expected) if entry.get("classifier", True) else None
        if share is not None:
            result["top1_agreement"] = share
            result["ok"] = result["ok"] and (share == 1.0 or entry["precision"] == "int8")
        row["outputs"][name] = result
    if "cpu_int8_reference" in entry:
        row["vs_cpu_int8"] = same_as_cpu_int8(ours, root / entry["cpu_int8_reference"])
    checks = [*row["outputs"].values(), *row.get("vs_cpu_int8", {}).values()]
    row["ok"] = all(r["ok"] for r in checks)
    compile_ = args.compile and time.perf_counter() - args.started < args.budget
    for label, timer in (
        ("torch", lambda: time_torch(onnx_path, feeds, entry["precision"], args.runs, compile_)),
        ("ort_cuda", lambda: time_ort_cuda(onnx_path, feeds, args.runs)),
    ):
        try:
            row.update(timer())
        except Exception as err:  # noqa: BLE001 - a missing baseline must not hide the rest
            row[f"{label}_error"] = (
                str(err).strip().splitlines()[-1][:200] if str(err) else repr(err)
            )
    return row


def table(rows: list[dict]) -> str:
    cols = ["case", "ok", "graphopt_ms", "torch_eager_ms", "torch_compile_ms", "ort_cuda_ms"]
    lines = [
        "| " + " | ".join(cols) + " | worst rel err | min cosine |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for row in rows:
        outs = row.get("outputs", {}).values()
        cells = [row.get(c, "-") for c in cols]
        cells = [f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells]
        rel = max((o["max_rel_err"] for o in outs), default=float("nan"))
        cos = min((o["cosine"] for o in outs), default=float("nan"))
        lines.append("| " + " | ".join(cells) + f" | {rel:.2e} | {cos:.6f} |")
    return "\n".join(lines)


def save(out: Path | None, rows: list[dict]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "gpu_check.md").write_text(table(rows) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--budget", type=float, default=420, help="seconds before torch.compile is skipped"
    )
    args = parser.parse_args()
    args.started = time.perf_counter()
    rows = []
    for entry in json.loads((args.root / "cases.json").read_text()):
        try:
            row = check_case(args.root, entry, args)
        except Exception as err:  # noqa: BLE001 - report and go on with the next case
            row = {"case": entry["case"], "ok": False, "error": str(err).strip()[-300:]}
        row["build"] = {k: entry[k] for k in ("compile_seconds", "bundle_bytes", "rules")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(args.out, rows)  # after every case: a call cut short keeps what it measured
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
