"""The CUDA int8 kernels (`targets/cuda/int8/`) compute what the CPU's int8 ops compute.

No GPU here. The unscheduled GPU kernels run on the CPU and must equal, bit for bit, the
portable kernels of `lower-int8` (which the CPU kernels are tested against) and the numpy
integer model, with the constants as `materialize-int8-cuda` packs them (padded panels,
uint8 shift folded into corr). The `int8-dp4a` schedule is checked structurally (dp4a, shared
tiles, thread bindings) and, with `__dp4a` written out as its four products, its thread loops
run serially on the CPU and give the unscheduled kernel's numbers; `window` (depthwise) and
`elementwise` (residual add) run serially as in test_cuda_rules.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from cuda_tools import serial_threads as serial
from tvm import relax, tirx

from graphopt import _tvm
from graphopt.int8_ops import (
    AddSpec,
    ConvSpec,
    Epilogue,
    MatmulSpec,
    Recipe,
    add_multipliers,
    reference_add,
    reference_conv2d,
)
from graphopt.passes import _int8_reference as portable
from graphopt.targets.cuda.int8 import gemm, kernels
from graphopt.targets.cuda.int8 import materialize as M
from graphopt.targets.cuda.int8.exact_quantize import exact_division
from graphopt.targets.cuda.schedules import rules
from graphopt.targets.cuda.target import Cuda

LLVM = _tvm.make_target({"kind": "llvm"})
REQ_I8 = Epilogue("int8", zp=3)
REQ_U8 = Epilogue("uint8", zp=0, lo=0.0, hi=200.0)  # a clip folded into the clamp
DEQ = Epilogue("float32", lo=0.0)  # relu
DYN = Epilogue("float32", dynamic=True)

CONVS = {
    "3x3-stride2": (ConvSpec(1, 8, 9, 9, 12, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, "int8"), -5),
    "1x1-uint8": (ConvSpec(2, 6, 7, 7, 40, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, "uint8"), 130),
    "grouped": (ConvSpec(1, 8, 6, 6, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2, "int8"), 0),
    "dilated": (ConvSpec(1, 4, 11, 11, 36, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1, "int8"), 7),
    "depthwise": (ConvSpec(1, 16, 10, 10, 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 16, "int8"), -3),
    "depthwise-uint8": (
        ConvSpec(2, 24, 7, 7, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 24, "uint8"),
        128,
    ),
}


def _run(func: tirx.PrimFunc, arrays: list[np.ndarray]) -> np.ndarray:
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), target=LLVM)
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _activations(rng, shape, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def _epilogue_constants(rng, n: int, k: int, out_dtype: str):
    corr = rng.integers(-2000, 2000, n).astype(np.int32)
    scale = (rng.uniform(0.2, 1.0, n) / (k * 40)).astype(np.float32)
    if out_dtype == "float32":
        scale *= np.float32(0.05)
    fbias = rng.normal(0, 0.1, n).astype(np.float32)
    return corr, scale, fbias


def _conv_case(name: str, ep: Epilogue):
    spec, zp = CONVS[name]
    rng = np.random.default_rng(len(name))
    x = _activations(rng, (spec.batch, spec.cin, spec.height, spec.width), spec.act_dtype)
    w = rng.integers(-128, 128, (spec.cout, spec.cin // spec.groups, spec.kh, spec.kw))
    consts = [w.astype(np.int8), *_epilogue_constants(rng, spec.cout, spec.k_group, ep.out_dtype)]
    return spec, zp, x, consts


def _out(shape, dtype: str) -> np.ndarray:
    return np.zeros(shape, dtype)


@pytest.mark.parametrize("ep", [REQ_I8, REQ_U8, DEQ], ids=["int8", "uint8", "fp32"])
@pytest.mark.parametrize("name", list(CONVS))
def test_conv_equals_the_portable_kernel_and_numpy(name, ep):
    spec, zp, x, consts = _conv_case(name, ep)
    oh, ow = spec.out_hw
    o_shape = (spec.batch, spec.cout, oh, ow)
    reference = portable.conv2d_reference(spec, "NCHW", zp, ep)
    want = _run(reference, [x, *consts, _out(o_shape, ep.out_dtype)])
    # numpy: raw sums (the zero point is corr's business), then the epilogue
    w_sum = consts[0].reshape(spec.cout, -1).astype(np.int64).sum(1)
    acc = reference_conv2d(x, consts[0], spec, zp) + zp * w_sum[None, :, None, None]
    expected = ep.numpy(acc, *(c[None, :, None, None] for c in consts[1:]))
    np.testing.assert_allclose(want, expected, rtol=1e-6, atol=1e-6)

    recipe = Recipe("conv2d", spec, zp, ep)
    built = M.build(recipe)
    out = _out(built.out_shape, ep.out_dtype)
    got = _run(built.kernel, [x, *built.pack(consts), out]).reshape(o_shape)
    if ep.requant:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _matmul_case(spec: MatmulSpec, ep: Epilogue, zp: int):
    rng = np.random.default_rng(spec.k)
    if spec.fused_quant:
        x = rng.normal(0, 2.0, (spec.rows, spec.k)).astype(np.float32)
    else:
        x = _activations(rng, (spec.rows, spec.k), spec.act_dtype)
    w = rng.integers(-128, 128, (spec.k, spec.n)).astype(np.int8)
    consts = [w, *_epilogue_constants(rng, spec.n, spec.k, ep.out_dtype)]
    if spec.per_row and not spec.fused_quant:
        xs = rng.uniform(0.01, 0.1, spec.rows).astype(np.float32)
    else:
        xs = np.array(1.0, np.float32)
    return x, consts, xs


MATMULS = {
    "static-int8": (MatmulSpec(20, 50, 40, "int8"), REQ_I8, -7),
    "static-uint8": (MatmulSpec(33, 64, 70, "uint8"), REQ_U8, 140),
    "dequant": (MatmulSpec(8, 17, 5, "int8"), DEQ, 0),
    "per-row": (MatmulSpec(20, 50, 40, "int8", per_row=True), DYN, 0),
    "fused-row-quant": (
        MatmulSpec(24, 96, 40, "int8", per_row=True, fused_quant=True, eps=1e-8, qmax=127.0),
        DYN,
        0,
    ),
}


@pytest.mark.parametrize("name", list(MATMULS))
def test_matmul_equals_the_portable_kernel(name):
    spec, ep, zp = MATMULS[name]
    x, consts, xs = _matmul_case(spec, ep, zp)
    o_shape = (spec.rows, spec.n)
    reference = portable.matmul_reference(spec, (1, spec.rows, spec.k), ep)
    want = _run(reference, [x[None], *consts, xs, _out((1, *o_shape), ep.out_dtype)])[0]

    built = M.build(Recipe("matmul", spec, zp, ep, x_shape=(1, spec.rows, spec.k)))
    assert built.x_shape == (spec.rows, spec.k) and built.out_shape == o_shape
    kernel = gemm.matmul_gemm(spec, ep, zp, divide=gemm.plain_divide)  # no __fdiv_rn on a CPU
    if spec.fused_quant:
        assert "__fdiv_rn" in built.kernel.script() and "__fdiv_rn" in built.row_scale.script()
        xs = _run(kernels.row_scale(spec, gemm.plain_divide), [x, _out(spec.rows, "float32")])
        want_rs = np.maximum(np.abs(x).max(1), np.float32(spec.eps)) / np.float32(spec.qmax)
        np.testing.assert_array_equal(xs, want_rs)
    got = _run(kernel, [x, *built.pack(consts), xs, _out(o_shape, ep.out_dtype)])
    if ep.requant:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_residual_add_equals_numpy():
    ma, mb, shift = add_multipliers(0.02, 0.03, 0.04)
    spec = AddSpec((1, 8, 5, 5), "int8", "int8", -3, 4, ma, mb, shift, Epilogue("int8", zp=-1))
    rng = np.random.default_rng(0)
    a, b = (_activations(rng, spec.shape, "int8") for _ in range(2))
    got = _run(kernels.add(spec), [a, b, _out(spec.shape, "int8")])
    np.testing.assert_array_equal(got, reference_add(a, b, spec))


def _schedule(func: tirx.PrimFunc, arch: str = "sm_75") -> rules.Outcome:
    with Cuda(Cuda.Options(arch=arch)).tvm_target() as target:
        return rules.schedule_func(func, target)


def test_tensor_cores_are_kept_for_large_gemms_on_sm80_and_newer():
    """Small GEMMs, and any GEMM before Ampere, stay on dp4a (decided before the tensor
    intrinsics are imported; the tensor-core build is a slow test)."""
    small = MATMULS["static-int8"]
    kernel = M.build(Recipe("matmul", small[0], small[2], small[1], x_shape=(20, 50))).kernel
    assert _schedule(kernel, "sm_90").rule == "int8-dp4a"
    large = MatmulSpec(128, 256, 192, "int8")
    kernel = M.build(Recipe("matmul", large, 0, REQ_I8, x_shape=(128, 256))).kernel
    assert _schedule(kernel, "sm_75").rule == "int8-dp4a"


@pytest.mark.parametrize("name", ["3x3-stride2", "grouped", "1x1-uint8"])
def test_conv_gemms_get_dp4a_from_shared_tiles(name):
    spec, zp = CONVS[name]
    outcome = _schedule(M.build(Recipe("conv2d", spec, zp, REQ_I8)).kernel)
    assert outcome.rule == "int8-dp4a", outcome.errors
    text = outcome.func.script()
    assert '"__dp4a"' in text and 'scope="shared"' in text and 'scope="local"' in text
    assert 'thread="threadIdx.x"' in text and 'thread="blockIdx.y"' in text


@pytest.mark.parametrize("name", list(MATMULS))
def test_matmul_gemms_get_dp4a(name):
    spec, ep, zp = MATMULS[name]
    built = M.build(Recipe("matmul", spec, zp, ep, x_shape=(spec.rows, spec.k)))
    outcome = _schedule(built.kernel)
    assert outcome.rule == "int8-dp4a", outcome.errors
    assert '"__dp4a"' in outcome.func.script()
    if built.row_scale is not None:
        assert _schedule(built.row_scale).rule in ("reduction", "general-reduction")


@pytest.mark.parametrize("name", ["depthwise", "depthwise-uint8"])
def test_depthwise_runs_in_the_window_rule(name):
    spec, zp, x, consts = _conv_case(name, REQ_I8)
    built = M.build(Recipe("conv2d", spec, zp, REQ_I8))
    outcome = _schedule(built.kernel)
    assert outcome.rule == "window", outcome.errors
    want = _run(built.kernel, [x, *consts, _out(built.out_shape, "int8")])
    got = _run(serial(outcome.func), [x, *consts, _out(built.out_shape, "int8")])
    np.testing.assert_array_equal(got, want)


def _on_cpu(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A scheduled GPU kernel the CPU can run: thread loops serial (each "thread" then stages
    whole shared tiles itself, the same values), `__dp4a` written out as its four int8
    products and `__fdiv_rn` as IEEE division (which is what it is)."""

    def rewrite(call):
        name = str(call.args[0]) if call.args else ""
        if "__fdiv_rn" in name:
            return call.args[1] / call.args[2]
        if "__dp4a" not in name:
            return call
        a, b, acc = call.args[1:]
        for i in range(4):
            ai = tirx.BufferLoad(a.source, [a.indices[0].base + i])
            bi = tirx.BufferLoad(b.source, [b.indices[0].base + i])
            acc = acc + tirx.Cast("int32", ai) * tirx.Cast("int32", bi)
        return acc

    func = serial(func)
    return func.with_body(tvm_ffi.structural_map(func.body, [(tvm.ir.Call, rewrite)]))


@pytest.mark.parametrize("name", ["3x3-stride2", "grouped", "dilated", "1x1-uint8"])
def test_scheduled_conv_gemm_computes_the_unscheduled_numbers(name):
    spec, zp, x, consts = _conv_case(name, REQ_I8)
    built = M.build(Recipe("conv2d", spec, zp, REQ_I8))
    outcome = _schedule(built.kernel)
    arrays = [x, *built.pack(consts), _out(built.out_shape, "int8")]
    want = _run(built.kernel, [a.copy() for a in arrays])
    np.testing.assert_array_equal(_run(_on_cpu(outcome.func), arrays), want)


@pytest.mark.parametrize("name", list(MATMULS))
def test_scheduled_matmul_gemm_computes_the_unscheduled_numbers(name):
    spec, ep, zp = MATMULS[name]
    x, consts, xs = _matmul_case(spec, ep, zp)
    built = M.build(Recipe("matmul", spec, zp, ep, x_shape=(spec.rows, spec.k)))
    if spec.fused_quant:
        xs = _run(_on_cpu(built.row_scale), [x, _out(spec.rows, "float32")])
    arrays = [x, *built.pack(consts), xs, _out(built.out_shape, ep.out_dtype)]
    want = _run(_on_cpu(built.kernel), [a.copy() for a in arrays])  # unscheduled
    got = _run(_on_cpu(_schedule(built.kernel).func), arrays)
    np.testing.assert_array_equal(got, want)


def test_residual_add_runs_in_the_elementwise_rule():
    ma, mb, shift = add_multipliers(0.05, 0.03, 0.04)
    spec = AddSpec((1, 16, 8, 8), "int8", "int8", 2, -4, ma, mb, shift, Epilogue("int8"))
    outcome = _schedule(kernels.add(spec))
    assert outcome.rule == "elementwise", outcome.errors
    assert "T.vectorized(4)" in outcome.func.script()  # int32 inside: 4 lanes, not 16
    rng = np.random.default_rng(1)
    a, b = (_activations(rng, spec.shape, "int8") for _ in range(2))
    got = _run(serial(outcome.func), [a, b, _out(spec.shape, "int8")])
    np.testing.assert_array_equal(got, reference_add(a, b, spec))


def _legalized(build, dtype: str = "float32") -> tirx.PrimFunc:
    x = relax.Var("x", relax.TensorType((2, 8), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(x))
        bb.emit_func_output(out)
    with Cuda().tvm_target():
        mod = relax.transform.LegalizeOps()(bb.get())
    return next(f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc))


def test_quantize_kernels_divide_exactly_and_others_keep_fast_math():
    scale, zp = relax.const(0.05, "float32"), relax.const(3, "int8")
    quantize = _legalized(lambda x: relax.op.quantize(x, scale, zp, axis=-1, out_dtype="int8"))
    exact = exact_division(quantize)
    assert exact is not None and "__fdiv_rn" in exact.script()
    x = np.random.default_rng(0).normal(0, 1, (2, 8)).astype(np.float32)
    x[0, 0] = np.float32(0.125)  # 2.5 steps in real numbers, just under in float32
    want = _run(quantize, [x, _out((2, 8), "int8")])
    assert want[0, 0] == 5  # round(2.5) = 2, + zero point 3
    np.testing.assert_array_equal(_run(_on_cpu(exact), [x, _out((2, 8), "int8")]), want)
    assert exact_division(_legalized(lambda x: relax.op.divide(x, relax.const(3.0)))) is None
