"""The CPU int8 kernels (what `materialize-int8` builds), alone, bit for bit against numpy.

Every dot-product scheme that can run here runs: vnni when the host has AVX-512 VNNI, avx2
compiled for znver3 (runs on any AVX2 host), generic for baseline x86-64. The ARM sdot path
is compile-only: its assembly must contain sdot. Each scheme's assembly must contain its
instruction (vpdpbusd, vpmaddwd, sdot).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm

from graphopt import _tvm
from graphopt import int8_ops as O
from graphopt.targets.cpu.int8 import conv_nchw as CN
from graphopt.targets.cpu.int8 import depthwise_nhwc as DW
from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.int8 import quantize_nhwc as QN
from tests.int8_kernel_tools import build_kernel as _build
from tests.int8_kernel_tools import call_kernel as _call
from tests.int8_kernel_tools import padded
from tests.int8_kernel_tools import random_ints as _ints

HOST_VNNI = {"avx512vnni", "avx512bw", "avx512f"} <= _tvm.host_cpu_features()
HOST_AVX2 = "avx2" in _tvm.host_cpu_features()

# (scheme, LLVM cpu it is compiled for)
RUNNABLE = [
    pytest.param(
        "vnni", "icelake-server", marks=pytest.mark.skipif(not HOST_VNNI, reason="no VNNI")
    ),
    pytest.param("avx2", "znver3", marks=pytest.mark.skipif(not HOST_AVX2, reason="no AVX2")),
    # The portable fallback: same code paths, checked in the slow run.
    pytest.param("generic", "x86-64", marks=pytest.mark.slow),
]


CONVS = {
    # name: (batch, cin, h, w, cout, kh, kw, stride, padding, dilation, groups)
    "3x3_pad_odd": (1, 5, 9, 7, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "stride2_asym_pad_groups_batch2": (2, 8, 10, 11, 12, 3, 3, (2, 2), (1, 0, 2, 1), (1, 1), 2),
    "1x1": (1, 16, 7, 7, 24, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_odd_channels": (3, 13, 5, 3, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_stride2": (1, 6, 9, 9, 5, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "5x3_dilated_nopad": (1, 4, 12, 10, 9, 5, 3, (1, 2), (0, 0, 0, 0), (2, 1), 1),
    "depthwise_multiplier2": (1, 4, 8, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 4),
}


def _conv_case(name, act_dtype, rng):
    dims = CONVS[name]
    spec = K.ConvSpec(*dims, act_dtype=act_dtype)
    x = _ints(rng, dims[:4], act_dtype)
    w = rng.integers(-127, 128, (spec.cout, spec.cin // spec.groups, spec.kh, spec.kw))
    return spec, x, w.astype(np.int8)


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_conv2d_requant_exact(isa, mcpu, name, act_dtype):
    rng = np.random.default_rng(len(name))
    spec, x, w = _conv_case(name, act_dtype, rng)
    scheme = K.ISAS[isa]
    plan = CN.conv_plan(spec, scheme)
    zp = int(rng.integers(-5, 6)) + (128 if act_dtype == "uint8" else 0)
    ep = K.Epilogue("int8", zp=-3, lo=-20.0, hi=100.0)
    og = spec.cout // spec.groups
    colsum = w.reshape(spec.cout, -1).astype(np.int64).sum(1)
    bias = rng.integers(-2000, 2000, spec.cout)
    corr = bias - (zp + scheme.offset(act_dtype)) * colsum
    scale = rng.uniform(0.001, 0.02, spec.cout).astype(np.float32)

    def per_group(v, dtype):
        return padded(v.reshape(spec.groups, og), plan.og_pad, dtype).reshape(-1)

    args = [x, CN.pack_conv_weight(w, spec, plan), per_group(corr, np.int32)]
    args += [per_group(scale, np.float32), np.zeros(spec.groups * plan.og_pad, np.float32)]
    lib = _build(CN.conv2d_kernel(spec, plan, zp, ep), mcpu)
    got = _call(lib, args, (spec.batch, spec.cout, *spec.out_hw), "int8")
    acc = O.reference_conv2d(x, w, spec, zp)
    c4 = (1, -1, 1, 1)
    want = ep.numpy(acc + bias.reshape(c4), 0, scale.reshape(c4), np.float32(0))
    np.testing.assert_array_equal(got, want)
    assert got.min() >= -20 and got.max() <= 100


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize(
    "dims",
    [
        (2, 6, 9, 11, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),
        (1, 5, 12, 13, 5, 3, 3, (2, 2), (1, 0, 1, 2), (1, 1), 5),
        (1, 4, 10, 10, 4, 5, 3, (1, 2), (2, 1, 2, 1), (2, 1), 4),
        (1, 3, 7, 7, 3, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 3),  # flat plane, 5x5
        (1, 4, 9, 10, 4, 3, 3, (1, 1), (2, 1, 0, 3), (2, 2), 4),  # flat, dilated, asymmetric
        (1, 2, 5, 37, 2, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),  # rows wider than a vector
    ],
)
@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_depthwise_exact(isa, mcpu, dims, act_dtype):
    rng = np.random.default_rng(1)
    spec = K.ConvSpec(*dims, act_dtype=act_dtype)
    assert spec.depthwise
    x = _ints(rng, dims[:4], act_dtype)
    w = rng.integers(-127, 128, (spec.cout, 1, spec.kh, spec.kw)).astype(np.int8)
    zp = 7 if act_dtype == "int8" else 131
    ep = K.Epilogue("uint8", zp=5, lo=5.0)  # relu folded: clamp at the zero point
    corr = rng.integers(-1000, 1000, spec.cout).astype(np.int32)
    scale = rng.uniform(0.001, 0.01, spec.cout).astype(np.float32)
    args = [x, w.reshape(spec.cout, -1), corr, scale, np.zeros_like(scale)]
    lib = _build(CN.depthwise_kernel(spec, K.ISAS[isa], zp, ep), mcpu)
    got = _call(lib, args, (spec.batch, spec.cout, *spec.out_hw), "uint8")
    c4 = (1, -1, 1, 1)
    want = ep.numpy(O.reference_conv2d(x, w, spec, zp), corr.reshape(c4), scale.reshape(c4), 0)
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 5


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize("name", ["3x3_pad_odd", "1x1_stride2", "5x3_dilated_nopad", "stem"])
@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_window_conv_nhwc_exact(isa, mcpu, name, act_dtype):
    """NHWC convs as a matmul over their windows (taps' channels padded to whole words)."""
    rng = np.random.default_rng(5)
    if name == "stem":  # 3 channels (not a whole word), stride 2, asymmetric padding, batch 2
        dims = (2, 3, 11, 10, 16, 3, 3, (2, 2), (1, 0, 1, 2), (1, 1), 1)
        spec = K.ConvSpec(*dims, act_dtype=act_dtype)
        x = _ints(rng, dims[:4], act_dtype)
        w = rng.integers(-127, 128, (16, 3, 3, 3)).astype(np.int8)
    else:
        spec, x, w = _conv_case(name, act_dtype, rng)
    scheme = K.ISAS[isa]
    oh, ow = spec.out_hw
    k = spec.kh * spec.kw * K.window_words(spec.cin, scheme) * scheme.kpack
    mspec = K.MatmulSpec(spec.batch * oh * ow, k, spec.cout, act_dtype)
    plan = K.matmul_plan(mspec, scheme)
    zp = int(rng.integers(-5, 6)) + (128 if act_dtype == "uint8" else 0)
    ep = K.Epilogue("int8", zp=2, lo=-50.0, hi=100.0)
    colsum = w.reshape(spec.cout, -1).astype(np.int64).sum(1)
    corr = np.zeros(plan.n_pad, np.int32)
    corr[: spec.cout] = -(zp + scheme.offset(act_dtype)) * colsum
    scale = np.zeros(plan.n_pad, np.float32)
    scale[: spec.cout] = rng.uniform(0.001, 0.02, spec.cout)
    args = [x.transpose(0, 2, 3, 1), K.pack_window_weight(w, plan), corr, scale]
    args += [np.zeros(plan.n_pad, np.float32), np.array(1.0, np.float32)]
    x_shape = (spec.batch, spec.height, spec.width, spec.cin)
    lib = _build(K.matmul_kernel(mspec, plan, x_shape, zp, ep, window=spec), mcpu)
    got = _call(lib, args, (spec.batch, oh, ow, spec.cout), "int8")
    c4 = (1, -1, 1, 1)
    acc = O.reference_conv2d(x, w, spec, zp)
    want = ep.numpy(acc, 0, scale[: spec.cout].reshape(c4), np.float32(0))
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("dtype,zp", [("int8", -3), ("uint8", 131)])
@pytest.mark.parametrize("shape", [(1, 3, 5, 37), (2, 1, 3, 16), (1, 4, 2, 7)])
def test_quantize_image_to_nhwc_exact(dtype, zp, shape):
    """fp32 NCHW -> int8 NHWC with 4 channels (the missing ones hold zp), as TVM quantizes."""
    rng = np.random.default_rng(7)
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    x.flat[:4] = [0.5, -0.5, 1.5, 2.5]  # ties round to even
    scale = np.float32(0.5) if dtype == "int8" else np.float32(0.037)
    lib = _build(QN.quantize_nhwc_kernel(shape, zp, dtype), "x86-64")
    n, c, h, w = shape
    got = _call(lib, [x, np.array(scale)], (n, h, w, 4), dtype)
    info = np.iinfo(dtype)
    want = np.full((n, h, w, 4), zp, dtype)
    want[..., :c] = np.clip(np.round(x / scale) + zp, info.min, info.max).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, want)


DEPTHWISE_NHWC = [
    (2, 6, 9, 11, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),  # channels < one vector
    (1, 32, 12, 13, 32, 3, 3, (2, 2), (1, 0, 1, 2), (1, 1), 32),  # stride 2, asymmetric pad
    (1, 20, 10, 10, 20, 5, 3, (1, 2), (2, 1, 2, 1), (2, 1), 20),  # channel tail, dilated
    (1, 16, 7, 7, 16, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 16),  # 5x5, row block past the end
    (1, 48, 14, 14, 48, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 48),
]


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize("dims", DEPTHWISE_NHWC)
@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_depthwise_nhwc_exact(isa, mcpu, dims, act_dtype):
    rng = np.random.default_rng(2)
    spec = K.ConvSpec(*dims, act_dtype=act_dtype)
    scheme = K.ISAS[isa]
    cp = DW.channel_pad(spec.cout, scheme)
    x = _ints(rng, dims[:4], act_dtype)
    w = rng.integers(-127, 128, (spec.cout, 1, spec.kh, spec.kw)).astype(np.int8)
    zp = -9 if act_dtype == "int8" else 120
    ep = K.Epilogue("int8", zp=-4, lo=-4.0, hi=90.0)
    corr = rng.integers(-1000, 1000, spec.cout).astype(np.int32)
    scale = rng.uniform(0.001, 0.01, spec.cout).astype(np.float32)

    args = [x.transpose(0, 2, 3, 1), padded(w.reshape(spec.cout, -1).T, cp), padded(corr, cp)]
    args += [padded(scale, cp), np.zeros(cp, np.float32)]
    lib = _build(DW.depthwise_nhwc_kernel(spec, scheme, zp, ep), mcpu)
    oh, ow = spec.out_hw
    got = _call(lib, args, (spec.batch, oh, ow, spec.cout), "int8")
    c4 = (1, -1, 1, 1)
    want = ep.numpy(O.reference_conv2d(x, w, spec, zp), corr.reshape(c4), scale.reshape(c4), 0)
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))
    assert got.min() >= -4 and got.max() <= 90


def _matmul(isa, mcpu, shape, n, act_dtype, ep, zp, rng):
    scheme = K.ISAS[isa]
    rows, k = int(np.prod(shape[:-1])), shape[-1]
    spec = K.MatmulSpec(rows, k, n, act_dtype)
    plan = K.matmul_plan(spec, scheme)
    x = _ints(rng, shape, act_dtype)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    corr = -(zp + scheme.offset(act_dtype)) * w.astype(np.int64).sum(0)
    scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    fbias = rng.normal(size=n).astype(np.float32)

    def pad(v, dtype):
        return padded(v, plan.n_pad, dtype)

    xs = np.array(0.37, np.float32)
    args = [x, K.pack_matmul_weight(w, plan), pad(corr, np.int32), pad(scale, np.float32)]
    args += [pad(fbias, np.float32), xs]
    lib = _build(K.matmul_kernel(spec, plan, shape, zp, ep), mcpu)
    got = _call(lib, args, (*shape[:-1], n), ep.out_dtype)
    acc = (x.reshape(rows, k).astype(np.int64) - zp) @ w.astype(np.int64)
    want = ep.numpy(acc, 0, scale, fbias, xs).reshape(got.shape)
    return got, want


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize("shape,n", [((2, 7, 13), 21), ((5, 64), 48), ((1, 3), 1), ((33, 70), 40)])
@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_matmul_requant_exact(isa, mcpu, shape, n, act_dtype):
    rng = np.random.default_rng(n)
    ep = K.Epilogue("uint8", zp=7, lo=7.0, hi=200.0)
    zp = 3 if act_dtype == "int8" else 140
    got, want = _matmul(isa, mcpu, shape, n, act_dtype, ep, zp, rng)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize("dynamic", [False, True])
def test_matmul_dequant(isa, mcpu, dynamic):
    """fp32 outputs: the integer part is exact; the last fp32 step may fuse into an FMA."""
    rng = np.random.default_rng(3)
    ep = K.Epilogue("float32", lo=0.0, dynamic=dynamic)
    got, want = _matmul(isa, mcpu, (3, 33), 19, "int8", ep, 0 if dynamic else -4, rng)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.min() == 0.0


# ---- instruction selection --------------------------------------------------------------


def _asm(func, target: dict) -> str:
    return tvm.tirx.build(
        tvm.IRModule({"main": func}), target=tvm.target.Target(target)
    ).inspect_source("asm")


TARGETS = {
    "vnni": {"kind": "llvm", "mcpu": "icelake-server"},
    "avx2": {"kind": "llvm", "mcpu": "znver3"},
    "sdot": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
}


@pytest.mark.parametrize("isa", list(TARGETS))
def test_target_picks_scheme(isa):
    assert K.isa_for_target(tvm.target.Target(TARGETS[isa])).name == isa
    plain_arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert K.isa_for_target(tvm.target.Target(plain_arm)).name == "generic"


@pytest.mark.parametrize("isa", list(TARGETS))
def test_inner_loop_uses_the_dot_instruction(isa):
    scheme = K.ISAS[isa]
    conv = K.ConvSpec(1, 32, 14, 14, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, "uint8")
    mm = K.MatmulSpec(64, 128, 96, "int8")
    kernels = [
        CN.conv2d_kernel(conv, CN.conv_plan(conv, scheme), 0, K.Epilogue("int8")),
        K.matmul_kernel(mm, K.matmul_plan(mm, scheme), (64, 128), 0, K.Epilogue("int8")),
    ]
    marker = K.ASM_MARKER[isa]
    for kernel in kernels:
        asm = _asm(kernel, TARGETS[isa])
        # The unrolled register tile issues mr * nr dot instructions per reduction step.
        assert asm.count(marker) >= 4, f"{isa}: {marker} missing from the kernel's assembly"


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize(
    "shape,dtypes,scales",
    [
        ((1, 24, 9, 7), ("int8", "int8", "int8"), (0.0473, 0.0219, 0.0617)),  # 1512: vectors + tail
        ((2, 3, 5, 5), ("uint8", "int8", "uint8"), (0.0113, 0.317, 0.2531)),  # all tail, mixed
        ((1, 64, 16, 16), ("int8", "uint8", "int8"), (3.013, 2.471, 0.0107)),  # large multipliers
    ],
)
def test_add_exact(isa, mcpu, shape, dtypes, scales):
    """The residual add kernel: bit-exact vs the numpy model, and within one step of the
    float math it replaces (dequantize, add, quantize with round half to even)."""
    rng = np.random.default_rng(len(shape) + int(scales[0] * 100))
    (da, db, do), (sa, sb, so) = dtypes, scales
    za, zb = (3 if da == "int8" else 130), (-7 if db == "int8" else 120)
    zo = -2 if do == "int8" else 128
    ma, mb, shift = O.add_multipliers(sa, sb, so)
    ep = K.Epilogue(do, zp=zo, lo=float(zo) if do == "uint8" else -math.inf)
    spec = K.AddSpec(shape, da, db, za, zb, ma, mb, shift, ep)
    a, b = _ints(rng, shape, da), _ints(rng, shape, db)
    lib = _build(K.add_kernel(spec), mcpu)
    got = _call(lib, [a, b], shape, do)
    np.testing.assert_array_equal(got, O.reference_add(a, b, spec))
    real = (a.astype(np.float64) - za) * sa + (b.astype(np.float64) - zb) * sb
    lo, hi = ep.bounds()
    want = np.clip(np.round(real / so) + zo, lo, hi)
    assert np.abs(got.astype(np.int64) - want).max() <= 1
    assert np.mean(got == want) > 0.99


def test_parallel_loops_are_exact(monkeypatch):
    """Layers big enough for parallel loops (here: every layer) compute the same integers;
    tiny ones run serially (no worker wake-ups)."""
    tiny = K.AddSpec((64,), "int8", "int8", 0, 0, 1, 1, 1, K.Epilogue("int8"))
    assert "parallel" not in str(K.add_kernel(tiny).script())
    monkeypatch.setattr(K, "PARALLEL_MIN_WORK", 0)
    isa, mcpu = ("vnni", "icelake-server") if HOST_VNNI else ("generic", "x86-64")
    for name in ("3x3_pad_odd", "1x1_odd_channels", "stride2_asym_pad_groups_batch2"):
        test_conv2d_requant_exact(isa, mcpu, name, "int8")
    test_depthwise_exact(isa, mcpu, (2, 6, 9, 11, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6), "int8")
    test_matmul_requant_exact(isa, mcpu, (33, 70), 40, "uint8")
    test_add_exact(isa, mcpu, (1, 24, 9, 7), ("int8", "int8", "int8"), (0.0473, 0.0219, 0.0617))
    assert "parallel" in str(K.add_kernel(tiny).script())


@pytest.mark.parametrize("isa", list(TARGETS))
def test_depthwise_and_add_compile_for_every_scheme(isa):
    """The kernels without a dot instruction (depthwise row and flat-plane forms, the add)
    still compile for each target, ARM included (only x86 runs them here)."""
    scheme = K.ISAS[isa]
    ep = K.Epilogue("int8", zp=1)
    kernels = [
        CN.depthwise_kernel(
            K.ConvSpec(1, 8, 7, 7, 8, 3, 3, (1, 1), (1,) * 4, (1, 1), 8, "int8"), scheme, 0, ep
        ),
        CN.depthwise_kernel(
            K.ConvSpec(1, 8, 40, 40, 8, 3, 3, (2, 2), (1,) * 4, (1, 1), 8, "int8"), scheme, 0, ep
        ),
        K.add_kernel(K.AddSpec((1, 8, 9, 9), "int8", "uint8", 1, 128, 3 << 20, 5 << 19, 22, ep)),
    ]
    for kernel in kernels:
        assert _asm(kernel, TARGETS[isa])
