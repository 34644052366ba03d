"""The CPU block-sparse kernels (`materialize-sparse`): equal to the dense kernels on the
same zeros, vectorized along the block's output channels, and chosen by the x86 target."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from graphopt import _tvm
from graphopt.build import run_stages
from graphopt.sparse_ops import SparseSpec, spec_of, to_bsr
from graphopt.target_infra import make_target
from graphopt.targets.cpu.schedules.common import CpuInfo
from graphopt.targets.cpu.sparse.kernels import _plan, bsr_kernel, row_tile
from graphopt.targets.cpu.sparse.nchw import bsr_nchw_kernel
from graphopt.targets.cpu.sparse.rules import sparsify_item
from graphopt.testing import run_through_target
from tests.sparse_models import (
    block_sparse,
    conv1x1_nchw,
    conv1x1_nhwc,
    dense,
    dense_gelu,
    residual_conv1x1,
)

HOST_AVX2 = "avx2" in _tvm.host_cpu_features()
AVX2 = CpuInfo(lanes=8, registers=16, cores=2)
AVX512 = CpuInfo(lanes=16, registers=32, cores=2)
needs_avx2 = pytest.mark.skipif(not HOST_AVX2, reason="no AVX2 on this host")


def _run_kernel(spec, info, arrays, mcpu="haswell"):
    func = bsr_kernel(spec, info).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=_target(mcpu))
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy(), lib


def _target(mcpu):
    return _tvm.make_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})


@needs_avx2
@pytest.mark.parametrize(
    "x_shape,n,block,info",
    [
        ((1, 14, 14, 32), 64, 8, AVX2),  # partial row tile? 196 rows -> 7-row tiles
        ((1, 13, 24), 48, 16, AVX2),  # 13 rows: a tile with invalid rows
        ((1, 40), 80, 8, AVX2),  # batch-1 GEMV
        ((1, 7, 7, 32), 64, 16, AVX2),  # 49 rows: each half of a 16-block its own task
        ((1, 5, 32), 64, 16, AVX512),  # 16-lane block (compiled here as two AVX2 halves)
        ((1, 5, 32), 64, 8, AVX512),  # block narrower than the register
        ((1, 7, 7, 32), 32, 16, AVX512),  # 49 rows in tiles of 13: the last one overlaps
    ],
)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_kernel_matches_numpy(x_shape, n, block, info, residual):
    rng = np.random.default_rng(0)
    k = x_shape[-1]
    w = block_sparse(k, n, block, 0.3)
    values, indices, indptr = to_bsr(w, block)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    spec = SparseSpec(x_shape, n, block, len(indices), -1.0, 2.0, residual)
    skip = rng.standard_normal(spec.out_shape).astype(np.float32)
    operands = [x, values, indices, indptr, bias] + ([skip] if residual else [])
    got, _ = _run_kernel(spec, info, operands)
    want = np.clip(x.reshape(-1, k) @ w + bias, -1.0, 2.0).reshape(spec.out_shape)
    np.testing.assert_allclose(got, want + skip if residual else want, rtol=1e-5, atol=1e-5)


@needs_avx2
def test_kernel_is_vectorized_fma():
    spec = SparseSpec((1, 64, 32), 64, 8, 1)
    asm = bsr_kernel(spec, AVX2).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": asm}), target=_target("haswell"))
    text = lib.inspect_source("asm")
    assert "vfmadd231ps\t(%" in text or "vfmadd231ps" in text
    assert "%ymm" in text


def test_partial_tile_reads_rows_at_constant_offsets():
    """49 rows in tiles of 13 (AVX-512, compiled only): the last tile is moved back, not
    clamped row by row, so each FMA reads its input straight from memory at a constant
    offset (no per-row index extracted from a vector register)."""
    spec = SparseSpec((1, 49, 64), 64, 16, 64)
    func = bsr_kernel(spec, AVX512).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=_target("skylake-avx512"))
    text = lib.inspect_source("asm")
    assert "{1to16}, %zmm" in text and "vpextrd" not in text


def test_wide_block_split_when_its_tile_is_partial():
    assert _plan(49, 16, AVX2) == (8, 1, 2, 7)
    assert _plan(48, 16, AVX2) == (8, 2, 1, 6)


def test_row_tile_prefers_divisors():
    assert row_tile(12544, 12) == 8
    assert row_tile(196, 12) == 7
    assert row_tile(1, 12) == 1
    assert row_tile(13, 12) == 7  # no divisor in [6, 12]: two tiles of 7, overlapping
    assert row_tile(49, 16) == 13


@needs_avx2
@pytest.mark.parametrize(
    "mod",
    [
        pytest.param(conv1x1_nhwc(block_sparse(96, 48, 8, 0.3)), id="conv1x1_relu6"),
        pytest.param(dense(block_sparse(64, 40, 8, 0.3)), id="gemv"),
        pytest.param(dense(block_sparse(96, 64, 8, 0.4), rows=(1, 12), relu=True), id="gemm"),
        pytest.param(dense(block_sparse(96, 64, 16, 0.3), rows=(1, 12)), id="gemm_16x1_blocks"),
        pytest.param(residual_conv1x1(block_sparse(48, 48, 8, 0.3)), id="conv1x1_residual"),
        pytest.param(dense_gelu(block_sparse(96, 64, 8, 0.3)), id="gemm_gelu"),
    ],
)
def test_sparse_build_equals_dense_build(mod):
    """Through the x86 stages: the sparse kernels give the dense kernels' numbers."""
    x = (
        np.random.default_rng(1)
        .standard_normal([int(d) for d in mod["main"].params[0].ty.shape])
        .astype(np.float32)
    )
    on = make_target("x86", {"mcpu": "haswell", "num_cores": "2"})
    off = make_target("x86", {"mcpu": "haswell", "num_cores": "2", "sparse": "false"})
    assert [s.isa for s in _sparse_kernels(on, mod)] == ["simd8"]
    assert _sparse_kernels(off, mod) == []
    sparse, dense_out = (
        run_through_target(mod, x, target=on),
        run_through_target(mod, x, target=off),
    )
    np.testing.assert_allclose(sparse, dense_out, rtol=1e-5, atol=1e-5)


def _sparse_kernels(target, mod):
    """Recipes of the sparse kernels after the target's legalize and schedule stages."""
    scheduled = run_stages(mod, target, ("legalize", "schedule"))
    return [spec_of(f) for f in scheduled.functions.values() if spec_of(f) is not None]


def test_x86_stages_carry_the_rule():
    avx2 = make_target("x86", {"mcpu": "haswell"})
    avx512 = make_target("x86", {"mcpu": "skylake-avx512"})
    assert "sparsify{block=8,wide_block=16," in " ".join(avx2.stages()["legalize"])
    assert "sparsify{block=16,wide_block=32," in " ".join(avx512.stages()["legalize"])
    assert sparsify_item(avx2.tvm_target()) in avx2.stages()["legalize"]
    off = make_target("x86", {"sparse": "false"}).stages()["legalize"]
    assert not any(p.startswith("sparsify") for p in off)
    assert "materialize-sparse" in avx2.stages()["schedule"]


def test_model_without_zeros_builds_dense():
    mod = dense(block_sparse(96, 64, 8, 1.0), rows=(1, 12))
    assert _sparse_kernels(make_target("x86", {"mcpu": "haswell"}), mod) == []


# ---- NCHW 1x1 convs: pixels in lanes, any zero pattern -------------------------------------


def _assert_same_numbers(mod, x: np.ndarray, target, dense) -> None:
    """`mod` built for `target` gives the `dense` build's numbers (fp32, within 1e-5)."""
    np.testing.assert_allclose(
        run_through_target(mod, x, target=target),
        run_through_target(mod, x, target=dense),
        rtol=1e-5,
        atol=1e-5,
    )


def _unstructured(k: int, n: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    return (w * (rng.random((k, n)) < density)).astype(np.float32)


@needs_avx2
@pytest.mark.parametrize(
    "x_shape,n,block",
    [
        ((1, 32, 7, 7), 48, 1),  # 49 pixels: 3 full vectors (AVX-512) and one single pixel
        ((2, 24, 5, 5), 16, 4),  # two images, a block of 4 channels
        ((1, 16, 14, 14), 32, 1),  # 196 pixels: full tiles, a shorter tile and singles
        ((1, 8, 2, 2), 8, 2),  # fewer pixels than a register: scalar lanes
    ],
)
@pytest.mark.parametrize("info", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_nchw_kernel_matches_numpy(x_shape, n, block, info, residual):
    rng = np.random.default_rng(block)
    b, k = x_shape[:2]
    keep = np.repeat(rng.random((k, n // block)) < 0.3, block, axis=1)
    w = (rng.standard_normal((k, n)) * keep).astype(np.float32)
    values, indices, indptr = to_bsr(w, block)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    spec = SparseSpec(x_shape, n, block, len(indices), 0.0, 6.0, residual, layout="nchw")
    skip = rng.standard_normal(spec.out_shape).astype(np.float32)
    func = bsr_nchw_kernel(spec, info).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=_target("haswell"))
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    operands = [x, values, indices, indptr, bias] + ([skip] if residual else [])
    lib["main"](*[tvm.runtime.tensor(a) for a in operands], out)
    y = np.einsum("bkp,kn->bnp", x.reshape(b, k, -1), w) + bias[None, :, None]
    want = np.clip(y, 0.0, 6.0).reshape(spec.out_shape)
    np.testing.assert_allclose(out.numpy(), want + skip if residual else want, atol=1e-5)


@needs_avx2
@pytest.mark.parametrize(
    "w, block",
    [
        pytest.param(_unstructured(48, 48, 0.15), 1, id="unstructured_85pc"),
        pytest.param(block_sparse(48, 48, 16, 0.5), 8, id="16x1_blocks_50pc"),
    ],
)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_nchw_build_equals_dense_build(w, block, residual):
    """x86 with layout=NCHW: sparsify takes NCHW 1x1 convs, with the largest block whose
    density clears its threshold (unstructured zeros: single weights), and the build gives
    the dense build's numbers; the residual join is folded in."""
    mod = conv1x1_nchw(w, hw=(9, 9), clip=not residual, residual=residual)
    x_shape = [int(d) for d in mod["main"].params[0].ty.shape]
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    opts = {"mcpu": "haswell", "num_cores": "2", "layout": "NCHW"}
    on, off = make_target("x86", opts), make_target("x86", {**opts, "sparse": "false"})
    specs = _sparse_kernels(on, mod)
    assert [(s.layout, s.block, s.residual) for s in specs] == [("nchw", block, residual)]
    _assert_same_numbers(mod, x, on, off)


@needs_avx2
@pytest.mark.parametrize(
    "density, options, nchw",
    [
        (0.08, {}, True),  # 92% scattered zeros: the default (layout=auto) keeps NCHW
        (0.3, {}, False),  # 70%: NHWC, dense
        (0.08, {"layout": "NHWC"}, False),
        (0.08, {"sparse": "false"}, False),
    ],
)
def test_layout_auto_keeps_nchw_for_scattered_zeros(density, options, nchw):
    """x86's default layout: NCHW where nearly all conv work is 1x1 convs of scattered zeros
    (the NCHW sparse kernels take single weights), NHWC otherwise; the numbers are the
    dense build's."""
    mod = conv1x1_nchw(_unstructured(96, 48, density), hw=(9, 9))
    target = make_target("x86", {"mcpu": "haswell", "num_cores": "2", **options})
    specs = _sparse_kernels(target, mod)
    assert [(s.layout, s.block) for s in specs] == ([("nchw", 1)] if nchw else [])
    x = np.random.default_rng(2).standard_normal((1, 96, 9, 9)).astype(np.float32)
    dense = make_target("x86", {"mcpu": "haswell", "num_cores": "2", "sparse": "false"})
    _assert_same_numbers(mod, x, target, dense)


@needs_avx2
def test_nchw_unstructured_too_dense_stays_dense():
    mod = conv1x1_nchw(_unstructured(64, 48, 0.4), hw=(9, 9))
    target = make_target("x86", {"mcpu": "haswell", "layout": "NCHW"})
    assert _sparse_kernels(target, mod) == []
