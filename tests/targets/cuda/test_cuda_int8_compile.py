"""`compile --target cuda --quantize int8`, compile-only (nvcc and gcc, no GPU).

Small CNNs (3x3 convs and a Gemm; an inverted-residual block with a depthwise conv and an int8
residual add) and a transformer block (static, and dynamic per-row quantization) for sm_90
and sm_75: the library holds machine code and PTX for the arch, every int8 conv and matmul
went to the `int8-dp4a` rule (depthwise convs to `window`), nothing to the Fallback, and the
PTX multiplies with `dp4a.s32.s32`. The lowered graph after `materialize-int8-cuda`, built for
the CPU, gives the CPU target's int8 outputs bit for bit. Bad combinations stay one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import model_builders as mb
import numpy as np
import onnx
import pytest
import tvm
from cuda_tools import big_matmul, needs_nvcc
from tvm import relax
from tvm.relax import op as R

import graphopt
from graphopt.compress.int8.calibrate import calibrate
from graphopt.compress.int8.flow import QuantOptions
from graphopt.compress.int8.ranges import write_ranges
from graphopt.pass_infra import make_pass
from graphopt.targets.cuda import fatbin
from graphopt.testing import apply_checked

pytestmark = [pytest.mark.cuda, needs_nvcc]

BUILDERS = {
    "cnn": mb.cnn,
    "expand_depthwise": mb.expand_depthwise,
    "transformer_block": mb.transformer_block,
}
CASES = [
    ("cnn", "sm_90", "static"),
    ("cnn", "sm_75", "static"),
    ("expand_depthwise", "sm_90", "static"),
    ("transformer_block", "sm_90", "dynamic"),
    ("transformer_block", "sm_75", "static"),
]


def _calibration(model: onnx.ModelProto, path: Path) -> str:
    """Eight random draws per input (the transformer's mask: the causal mask)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == "mask":
            arrays["mask"] = np.repeat(mb.causal_mask(), 8, axis=0).astype(np.float32)
        else:
            arrays[value.name] = rng.normal(size=[8, *shape[1:]]).astype(np.float32)
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    """int8_build(name, arch, mode) -> (artifact, {pass: stats}), compiled once."""
    root = tmp_path_factory.mktemp("cuda-int8")
    cache: dict[tuple, tuple] = {}

    def get(name: str, arch: str, mode: str):
        key = (name, arch, mode)
        if key not in cache:
            model = BUILDERS[name]()
            path = mb.save(model, root / f"{name}.onnx")
            quant = QuantOptions(
                _calibration(model, root / f"{name}.npz"),
                mode=mode,
                granularity="row" if mode == "dynamic" else "tensor",
                sensitivity=False,
            )
            art = graphopt.compile(
                path,
                root / f"{name}-{arch}-{mode}",
                target="cuda",
                target_options={"arch": arch},
                quantization=quant,
            )
            rows = json.loads((art.directory / "manifest.json").read_text())["report"]["passes"]
            cache[key] = (art, {r["pass"].split("{")[0]: r["stats"] for r in rows})
        return cache[key]

    return get


@pytest.mark.parametrize(("name", "arch", "mode"), CASES)
def test_int8_kernels_are_dp4a_in_the_fatbin(int8_build, name, arch, mode):
    art, stats = int8_build(name, arch, mode)
    data = art.library_path.read_bytes()
    assert {(e.kind, e.arch) for e in fatbin.entries(data)} >= {("elf", arch), ("ptx", arch)}
    assert not fatbin.carries_source(data)
    ptx = fatbin.ptx_text(art.library_path)
    assert "dp4a.s32.s32" in ptx
    built, scheduled = stats["materialize-int8-cuda"], stats["schedule-cuda"]
    assert built["kernels"] >= 1 and built["calls"] >= built["kernels"]
    assert scheduled["scheduled_int8-dp4a"] >= 1
    assert scheduled["scheduled_fallback"] == 0 and scheduled["untouched"] == 0
    if mode == "static":  # the input's quantize divides in IEEE arithmetic, as on the CPU
        assert built["exact_quantize"] >= 1 and "div.rn" in ptx
    if name == "expand_depthwise":
        assert scheduled["scheduled_window"] >= 1  # the int8 depthwise conv
    if name == "transformer_block":
        assert scheduled["scheduled_int8-dp4a"] >= 3  # q/k/v/out/ffn matmuls share kernels


def test_every_int8_op_of_the_cnns_was_built_for_the_gpu(int8_build):
    """Static int8: each lowered conv / matmul / add becomes a GPU kernel call."""
    _, stats = int8_build("expand_depthwise", "sm_90", "static")
    lowered = stats["lower-int8"]
    ops = lowered["lowered_conv2d"] + lowered["lowered_matmul"] + lowered["lowered_add"]
    assert ops >= 3 and stats["materialize-int8-cuda"]["calls"] == ops


# slow: the first tensor-core schedule in a process imports tvm.s_tir.tensor_intrin (about 45 s
# on an idle core, minutes on a busy 2-core machine); `make test-slow` runs it.
@pytest.mark.tensorcore
@pytest.mark.slow
def test_large_int8_matmuls_use_tensor_cores_on_sm90(tmp_path):
    path = big_matmul(tmp_path / "big.onnx")
    calib = tmp_path / "big.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32))
    quant = QuantOptions(str(calib), sensitivity=False)
    stats = {}
    for arch in ("sm_90", "sm_75"):
        art = graphopt.compile(
            path, tmp_path / arch, target="cuda", target_options={"arch": arch}, quantization=quant
        )
        rows = art.manifest["report"]["passes"]
        stats[arch] = next(r["stats"] for r in rows if r["pass"].startswith("schedule-cuda"))
        ptx = fatbin.ptx_text(art.library_path)
        if arch == "sm_90":
            assert "wmma.mma.sync" in ptx and ".s8" in ptx
    assert stats["sm_90"]["scheduled_int8-tensorcore"] == 1
    assert stats["sm_75"]["scheduled_int8-dp4a"] == 1  # Turing: dp4a


def _lowered_cnn(tmp_path) -> tuple[tvm.IRModule, np.ndarray]:
    """stem conv -> depthwise -> pointwise + residual -> pointwise -> int8 quantize, as
    `quantize` + `lower-int8` leave it (portable kernels)."""
    rng = np.random.default_rng(3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 18, 18), "float32"))

    def conv(y, cout, cin, k, groups=1, stride=1):
        w = relax.const(rng.normal(size=(cout, cin // groups, k, k)).astype(np.float32) * 0.3)
        y = bb.emit(R.nn.conv2d(y, w, strides=stride, padding=(k // 2,) * 4, groups=groups))
        return bb.emit(R.add(y, relax.const(rng.normal(size=(1, cout, 1, 1)).astype("f"))))

    with bb.function("main", [x]):
        with bb.dataflow():
            stem = bb.emit(R.nn.relu(conv(x, 16, 3, 3, stride=2)))
            y = bb.emit(R.clip(conv(stem, 16, 16, 3, groups=16), 0.0, 6.0))
            y = conv(bb.emit(R.add(stem, conv(y, 16, 16, 1))), 8, 16, 1)
            scale, zp = relax.const(0.05, "float32"), relax.const(3, "int8")
            out = bb.emit_output(R.quantize(y, scale, zp, axis=-1, out_dtype="int8"))
        bb.emit_func_output(out)
    feeds = [{"x": rng.normal(size=(1, 3, 18, 18)).astype(np.float32)} for _ in range(4)]
    ranges = tmp_path / "ranges.json"
    write_ranges(ranges, calibrate(bb.get(), feeds, "minmax"), "minmax")
    quantized = apply_checked(make_pass("quantize", {"ranges": str(ranges)}), bb.get()).module
    lowered = apply_checked(make_pass("lower-int8", {}), quantized)
    assert lowered.stats["lowered_conv2d"] == 4 and lowered.stats["lowered_add"] == 1
    return lowered.module, rng.normal(size=(1, 3, 18, 18)).astype(np.float32)


def _run_on_cpu(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    mod = relax.transform.LegalizeOps()(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_gpu_kernels_give_the_cpu_kernels_outputs(tmp_path):
    """One lowered module: materialize-int8 (CPU, generic scheme) and materialize-int8-cuda
    (its GPU kernels, unscheduled, built for the CPU) give the same int8 outputs."""
    mod, x = _lowered_cnn(tmp_path)
    cpu = apply_checked(make_pass("materialize-int8", {"isa": "generic"}), mod).module
    gpu = apply_checked(make_pass("materialize-int8-cuda", {}), mod)
    assert gpu.stats["kernels"] == 5 and gpu.stats["calls"] == 5  # 4 convs, 1 add
    want, got = _run_on_cpu(cpu, x), _run_on_cpu(gpu.module, x)
    assert got.dtype == np.int8 and np.abs(want.astype(int)).max() > 10
    np.testing.assert_array_equal(got, want)


def _cli(args: list[str], path: str | None = None) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": path if path is not None else os.environ["PATH"]}
    cmd = [str(bindir / "graphopt"), "compile", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--target-opt", "arch=sm_70"], "error: target 'cuda': unknown arch 'sm_70'"),
        (["--no-nvcc"], "error: target 'cuda' needs nvcc"),
    ],
)
def test_bad_cuda_int8_combinations_are_one_line_errors(tmp_path, extra, words):
    model = mb.save(mb.cnn(), tmp_path / "cnn.onnx")
    calib = _calibration(mb.cnn(), tmp_path / "cnn.npz")
    path = str(Path(sys.executable).parent) if extra == ["--no-nvcc"] else None
    extra = [] if extra == ["--no-nvcc"] else extra
    args = [str(model), "--target", "cuda", *extra, "--quantize", "int8"]
    proc = _cli([*args, "--calibration", calib, "-o", str(tmp_path / "out")], path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(words), proc.stderr


def test_int4_on_cuda_stays_a_one_line_error(tmp_path):
    model = mb.save(mb.transformer_block(), tmp_path / "block.onnx")
    calib = _calibration(mb.transformer_block(), tmp_path / "block.npz")
    args = [str(model), "--target", "cuda", "--quantize", "int4", "--calibration", calib]
    proc = _cli([*args, "-o", str(tmp_path / "out")])
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--quantize int4 kernels are CPU-only" in lines[0]
