"""The fused bf16 pointwise + depthwise kernel (targets/cpu/precision/expand_depthwise.py) and
`fuse-expand-depthwise`: the kernel bit for bit against the two kernels it replaces (strides,
kernel sizes, bands that end early), the band choice, what it refuses, and a model whose
expanded map outgrows the L2 caches compiled with the same numbers as without the pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm

import graphopt
from graphopt import _tvm
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.pass_infra import PassResult
from graphopt.precision_depthwise import DepthwiseSpec
from graphopt.precision_ops import PrecisionMatmulSpec
from graphopt.targets.cpu.passes.fuse_expand_depthwise import FuseExpandDepthwise
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision.depthwise import depthwise16_kernel
from graphopt.targets.cpu.precision.expand_depthwise import (
    band_rows,
    expand_depthwise_kernel,
    fusable,
)
from tests.model_builders import GraphBuilder, _value_info
from tests.targets.test_precision_dpbf16 import ZNVER4, needs_bf16

# name: (H, W, K, N, kernel, stride, L2 bytes the bands are planned for)
CASES = {
    "3x3_stride2": (23, 17, 16, 32, 3, 2, 1 << 20),
    "3x3_stride1_small_bands": (13, 11, 8, 48, 3, 1, 40_000),
    "5x5_stride2_small_bands": (19, 9, 24, 16, 5, 2, 20_000),
}


def _specs(h, w, k, n, ks, stride, bias=True):
    pad = ks // 2
    mm = PrecisionMatmulSpec(
        (1, h, w, k), n, "bf16", layout=D.LAYOUT, bias=bias, lo=0.0, hi=6.0, x_bits=True,
        out_bits=True,
    )  # fmt: skip
    dw = DepthwiseSpec(
        (1, h, w, n), (ks, ks), (stride, stride), (pad,) * 4, "bf16", bias=bias, lo=0.0, hi=6.0,
        x_bits=True, out_bits=True,
    )  # fmt: skip
    return mm, dw


def _bits(rng, shape) -> np.ndarray:
    """bf16 bit patterns of both signs between 2^-11 and 2."""
    sign = rng.integers(0, 2, size=shape).astype(np.uint16) << 15
    return rng.integers(0x3A00, 0x4000, size=shape).astype(np.uint16) | sign


def _build(func):
    target = _tvm.make_target(ZNVER4)
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(module, target=target)["main"]


@needs_bf16
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_the_two_kernels(case):
    h, w, k, n, ks, stride, l2 = CASES[case]
    mm, dw = _specs(h, w, k, n, ks, stride)
    assert fusable(mm, dw)
    rng = np.random.default_rng(len(case))
    wp = D.pack_pairs(_bits(rng, (k, n)), mm)
    x, w2 = _bits(rng, mm.x_shape), _bits(rng, (ks, ks, n))
    b1, b2 = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    t = [tvm.runtime.tensor(a) for a in (x, wp, b1, w2, b2)]
    mid = tvm.runtime.tensor(np.zeros((1, h, w, n), np.uint16))
    want, got = (tvm.runtime.tensor(np.zeros(dw.out_shape, np.uint16)) for _ in range(2))
    with _tvm.make_target(ZNVER4):
        _build(D.pair_kernel(mm, D.DPBF16))(t[0], t[1], t[2], mid)
        _build(depthwise16_kernel(dw, 16, True))(mid, t[3], t[4], want)
        _build(expand_depthwise_kernel(mm, dw, threads=2, l2_bytes=l2))(*t, got)
    assert np.array_equal(got.numpy(), want.numpy())


def test_bands_are_the_largest_that_fit_and_share_the_threads():
    _mm, dw = _specs(112, 112, 16, 96, 3, 2)  # MobileNetV2's first expansion: 56 output rows
    assert band_rows(dw, threads=2, l2_bytes=1 << 20) == 14  # 4 bands, 29 input rows 0.6 MB
    assert band_rows(dw, threads=2, l2_bytes=200_000) == 2  # 5 input rows, 0.11 MB
    assert band_rows(dw, threads=3, l2_bytes=1 << 20) == 10  # 6 bands, 2 a thread


def test_refuses_what_it_cannot_run():
    mm, dw = _specs(8, 8, 16, 32, 3, 1)
    assert fusable(mm, dw)
    assert not fusable(dataclasses.replace(mm, residual=True), dw)
    assert not fusable(dataclasses.replace(mm, layout="cpu16"), dw)  # the fp32-FMA kernel
    assert not fusable(dataclasses.replace(mm, x_shape=(2, 8, 8, 16)), dw)  # two images
    assert not fusable(dataclasses.replace(mm, x_shape=(1, 8, 8, 15)), dw)  # odd K
    assert not fusable(mm, dataclasses.replace(dw, x_bits=False))


def _block(size: int):
    """1x1 16 -> 16, Clip (the first layer, which bf16 keeps fp32 without data), 1x1 16 -> 96,
    Clip, depthwise 3x3 stride 2, Clip, 1x1 96 -> 16."""
    g = GraphBuilder(11)
    zero, six = g.const(np.float32(0.0)), g.const(np.float32(6.0))
    h = g.op("Clip", [g.conv("x", 16, 16, 1), zero, six])
    h = g.op("Clip", [g.conv(h, 16, 96, 1), zero, six])
    h = g.op("Clip", [g.conv(h, 96, 96, 3, group=96, pad=1, stride=2), zero, six])
    out = (size - 1) // 2 + 1
    y = g.conv(h, 96, 16, 1)
    return g.model([_value_info("x", [1, 16, size, size])], [("y", y, [1, 16, out, out])], "b")


def _compile(model, out):
    art = graphopt.compile(
        model, out, opt_level=3, compression=[Precision(PrecisionOptions("bf16"))],
        target_options={"mcpu": "znver4", "num_cores": "2"},
    )  # fmt: skip
    stats = [p for p in art.manifest["report"]["passes"] if p["pass"] == "fuse-expand-depthwise"]
    return art, stats[0]["stats"]["fused"]


@needs_bf16
def test_large_map_fused_with_the_same_numbers(tmp_path, monkeypatch):
    """112x112x96 in bf16 is 2.4 MB, more than 2 cores' 1 MB L2 caches."""
    model = _block(112)
    fused, count = _compile(model, tmp_path / "fused")
    assert count == 1
    monkeypatch.setattr(FuseExpandDepthwise, "run", lambda self, mod: PassResult(mod, False, {}))
    plain = graphopt.compile(
        model, tmp_path / "plain", opt_level=3, compression=[Precision(PrecisionOptions("bf16"))],
        target_options={"mcpu": "znver4", "num_cores": "2"},
    )  # fmt: skip
    x = np.random.default_rng(0).standard_normal((1, 16, 112, 112)).astype(np.float32)
    assert np.array_equal(fused.run({"x": x})["y"], plain.run({"x": x})["y"])


def test_small_map_left_alone(tmp_path):
    """40x40x96 in bf16 (0.3 MB) stays in L2 between the two kernels."""
    _art, count = _compile(_block(40), tmp_path / "small")
    assert count == 0


def test_any_relax_function_not_only_main():
    """Builds of their own (the int8 speed probe's) name their function otherwise."""
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("probe", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    with _tvm.make_target(ZNVER4):
        result = FuseExpandDepthwise().run(bb.get())
    assert not result.modified and result.stats == {"fused": 0}
