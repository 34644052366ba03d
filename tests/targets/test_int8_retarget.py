"""One int8 graph, four targets: `quantize` + `lower-int8` once, then each target's stages.

The lowered module (portable int8 ops) is compiled for x86 with VNNI (cascadelake), x86 with
AVX2 (znver3), baseline x86-64 (the generic scheme) and an ARM board with dotprod (rpi5), each
through that target's own stages and TIR pipeline: `materialize-int8` builds every op for the
target's scheme. The x86 builds this machine can run agree bit for bit (the models end in an
int8 quantize, so the outputs are integers); the VNNI and ARM builds are checked in their
assembly (vpdpbusd, sdot); VNNI runs where the host has it. (The ARM build of the bundled
digits model runs under qemu in tests/arm/test_arm_int8.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from aarch64_tools import needs_aarch64_tools
from tvm import relax
from tvm.relax import op as R

from graphopt import _tvm
from graphopt.compress.int8.calibrate import calibrate
from graphopt.compress.int8.ranges import write_ranges
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline
from graphopt.target_infra import STAGES, make_target
from graphopt.testing import apply_checked

HOST = _tvm.host_cpu_features()
HOST_VNNI = {"avx512vnni", "avx512bw", "avx512f"} <= HOST
HOST_AVX2 = "avx2" in HOST

# name: (target, options, scheme materialize-int8 must pick, instruction in the assembly)
TARGETS = {
    "vnni": ("x86", {"mcpu": "cascadelake"}, "vnni", "vpdpbusd"),
    "avx2": ("x86", {"mcpu": "znver3"}, "avx2", "vpmaddwd"),
    "generic": ("x86", {"mcpu": "x86-64"}, "generic", None),
    "arm": ("arm", {"board": "rpi5", "bundle": "false"}, "sdot", "sdot"),
}
RUNS_HERE = {"vnni": HOST_VNNI, "avx2": HOST_AVX2, "generic": True, "arm": False}


def _cnn(bb: relax.BlockBuilder, x, rng):
    """stem conv (3 channels) -> depthwise -> pointwise -> residual add -> pointwise."""

    def conv(y, cout, cin, k, groups=1, stride=1):
        w = relax.const(rng.normal(size=(cout, cin // groups, k, k)).astype(np.float32) * 0.3)
        y = bb.emit(R.nn.conv2d(y, w, strides=stride, padding=(k // 2,) * 4, groups=groups))
        return bb.emit(R.add(y, relax.const(rng.normal(size=(1, cout, 1, 1)).astype(np.float32))))

    stem = bb.emit(R.nn.relu(conv(x, 16, 3, 3, stride=2)))
    y = bb.emit(R.clip(conv(stem, 16, 16, 3, groups=16), 0.0, 6.0))
    y = bb.emit(R.add(stem, conv(y, 16, 16, 1)))
    return conv(y, 8, 16, 1)


def _mlp(bb: relax.BlockBuilder, x, rng):
    """matmul -> relu -> matmul (a transformer's feed-forward block)."""
    w1 = relax.const(rng.normal(size=(32, 48)).astype(np.float32) * 0.2)
    w2 = relax.const(rng.normal(size=(48, 16)).astype(np.float32) * 0.2)
    y = bb.emit(R.nn.relu(R.add(R.matmul(x, w1), relax.const(rng.normal(size=48).astype("f")))))
    return bb.emit(R.matmul(y, w2))


MODELS = {"cnn": ((1, 3, 18, 18), _cnn), "mlp": ((1, 12, 32), _mlp)}


def _quantized(model: str, layout: str, tmp_path) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """The float model ending in an int8 quantize, calibrated, `quantize`d and lowered."""
    shape, body = MODELS[model]
    rng = np.random.default_rng(17)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = body(bb, x, rng)
            s, zp = relax.const(0.05, "float32"), relax.const(3, "int8")
            out = bb.emit_output(R.quantize(y, s, zp, axis=-1, out_dtype="int8"))
        bb.emit_func_output(out)
    mod = bb.get()
    feeds = [{"x": rng.normal(size=shape).astype(np.float32)} for _ in range(4)]
    ranges = tmp_path / "ranges.json"
    write_ranges(ranges, calibrate(mod, feeds, "minmax"), "minmax")
    quantized = apply_checked(make_pass("quantize", {"ranges": str(ranges)}), mod).module
    lowered = apply_checked(make_pass("lower-int8", {"layout": layout}), quantized)
    assert lowered.stats["left"] == 0
    assert lowered.stats["lowered_conv2d" if model == "cnn" else "lowered_matmul"] >= 2
    inputs = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
    return lowered.module, inputs


def _compile(mod: tvm.IRModule, name: str):
    """The module through the target's stages and `tvm.compile` with its TIR pipeline; the
    executable and materialize-int8's stats."""
    kind, options, _scheme, _marker = TARGETS[name]
    target = make_target(kind, options)
    stages = target.stages()
    stats = {}
    with target.tvm_target():
        for stage in STAGES:
            for p in instantiate(parse_pipeline(",".join(stages[stage]))):
                result = p(mod)
                mod = result.module
                stats = dict(result.stats) if p.name == "materialize-int8" else stats
    executable = tvm.compile(
        mod, target=target.tvm_target(), relax_pipeline=None, tir_pipeline=target.tir_pipeline()
    )
    return executable, stats, target


def _asm(executable) -> str:
    lib = executable.mod if hasattr(executable, "mod") else executable
    texts = [m.inspect_source("asm") for m in lib.imports if m.kind == "llvm"]
    return "\n".join(texts)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_one_lowered_module_compiles_for_every_target(model, layout, tmp_path):
    mod, inputs = _quantized(model, layout, tmp_path)
    outputs = {}
    for name in TARGETS:
        if name == "arm" and needs_aarch64_tools.args[0]:
            continue  # the ARM target needs its cross compiler even to be made
        executable, stats, target = _compile(mod, name)
        scheme, marker = TARGETS[name][2], TARGETS[name][3]
        assert stats[f"isa_{scheme}"] == 1 and stats["kernels"] >= 2, (name, stats)
        if marker is not None:
            assert marker in _asm(executable), f"{name}: {marker} missing"
        if RUNS_HERE[name]:
            vm = relax.VirtualMachine(executable, target.device())
            outputs[name] = [vm["main"](tvm.runtime.tensor(x)).numpy() for x in inputs]
    assert {"avx2", "generic"} <= set(outputs) or not HOST_AVX2
    first, *rest = outputs.values()
    for name, got in zip(list(outputs)[1:], rest):
        for a, b in zip(first, got):
            assert a.dtype == np.int8
            np.testing.assert_array_equal(a, b, err_msg=f"{name} differs")
