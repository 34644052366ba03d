"""sparsify: block-sparse constant weights of NHWC 1x1 convs and matmuls -> BSR ops."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.binding_graph import op_name
from graphopt.pass_infra import make_pass
from graphopt.sparse_ops import block_density, from_bsr, spec_of, to_bsr
from graphopt.testing import check_no_change, check_numerics
from tests.sparse_models import block_sparse, conv1x1_nhwc, dense, dense_gelu, residual_conv1x1

SPARSIFY = make_pass("sparsify", {"block": "8", "max_density": "0.6"})


def _kernels(mod):
    return [spec_of(f) for f in mod.functions.values() if spec_of(f) is not None]


@pytest.mark.parametrize(
    "mod",
    [
        pytest.param(conv1x1_nhwc(block_sparse(32, 48, 8, 0.3)), id="conv1x1_clip"),
        pytest.param(dense(block_sparse(64, 40, 8, 0.3), rows=(1,)), id="gemv"),
        pytest.param(dense(block_sparse(64, 32, 8, 0.5), rows=(1, 6), relu=True), id="gemm3d"),
    ],
)
def test_sparse_layers_become_one_op(mod):
    result = check_numerics(SPARSIFY, mod)
    assert result.stats["layers_sparse"] == 1
    (spec,) = _kernels(result.module)
    assert spec.block == 8
    # bias and activation are in the op: no other operator is left
    ops = [op_name(b.value) for b in result.module["main"].body.blocks[0].bindings]
    assert [o for o in ops if o] == ["relax.call_tir"]


def test_epilogue_bounds_recorded():
    result = SPARSIFY.run(conv1x1_nhwc(block_sparse(32, 48, 8, 0.3)))
    (spec,) = _kernels(result.module)
    assert (spec.lo, spec.hi) == (0.0, 6.0)


def test_no_zeros_takes_dense_path():
    result = check_no_change(SPARSIFY, conv1x1_nhwc(block_sparse(32, 48, 8, 1.0)))
    assert result.stats["layers_dense"] == 1


def test_density_above_threshold_stays_dense():
    check_no_change(SPARSIFY, dense(block_sparse(64, 40, 8, 0.8)))


def test_unstructured_zeros_are_not_blocks():
    """70% zeros scattered element by element leave almost every 8x1 block nonzero."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    assert block_density(w, 8) > 0.9
    check_no_change(SPARSIFY, dense(w))


def test_strided_conv_is_not_a_matmul():
    check_no_change(SPARSIFY, conv1x1_nhwc(block_sparse(32, 48, 8, 0.3), hw=(8, 8), stride=2))


def test_compressed_bytes_follow_density():
    result = SPARSIFY.run(dense(block_sparse(256, 256, 8, 0.3)))
    ratio = result.stats["weight_bytes_sparse"] / result.stats["weight_bytes_dense"]
    assert 0.3 < ratio < 0.35  # 30% of the values plus one int32 index per 8 values


def test_bsr_round_trip():
    w = block_sparse(24, 32, 16, 0.4, seed=3)
    values, indices, indptr = to_bsr(w, 16)
    assert len(indices) == round(0.4 * 24 * 2)
    np.testing.assert_array_equal(from_bsr(values, indices, indptr, 24, 16), w)
    empty = to_bsr(np.zeros((4, 16), np.float32), 8)
    assert empty[0].shape == (1, 8) and not empty[2].any()


def test_block_halves_to_tile_output_channels():
    """1000 classes on a 16-lane target: 8-channel blocks."""
    wide = make_pass("sparsify", {"block": "16", "max_density": "0.6"})
    result = wide.run(dense(block_sparse(64, 40, 8, 0.3)))
    assert [s.block for s in _kernels(result.module)] == [8]
    assert wide.run(dense(block_sparse(64, 36, 4, 0.3))).stats["layers_sparse"] == 0


def test_short_reductions_stay_dense():
    short = make_pass("sparsify", {"block": "8", "max_density": "0.6", "min_k": "64"})
    check_no_change(short, conv1x1_nhwc(block_sparse(32, 48, 8, 0.3)))
    assert short.run(dense(block_sparse(64, 40, 8, 0.3))).stats["layers_sparse"] == 1


def test_wide_block_where_the_zeros_allow():
    wide = make_pass("sparsify", {"block": "8", "wide_block": "16", "max_density": "0.5"})
    by16 = wide.run(dense(block_sparse(64, 64, 16, 0.3)))
    by8 = wide.run(dense(block_sparse(64, 64, 8, 0.3)))
    assert [s.block for s in _kernels(by16.module)] == [16]
    assert [s.block for s in _kernels(by8.module)] == [8]


@pytest.mark.parametrize("clip", [False, True], ids=["add", "clip_then_add"])
def test_residual_add_folded_into_the_op(clip):
    result = check_numerics(SPARSIFY, residual_conv1x1(block_sparse(32, 32, 8, 0.3), clip=clip))
    assert result.stats["residual_adds"] == 1
    (spec,) = _kernels(result.module)
    assert spec.residual and spec.hi == (6.0 if clip else np.inf)
    ops = [op_name(b.value) for b in result.module["main"].body.blocks[0].bindings]
    assert [o for o in ops if o] == ["relax.call_tir"]


def test_residual_left_out_when_asked():
    pass_ = make_pass("sparsify", {"block": "8", "max_density": "0.6", "residual": "false"})
    result = check_numerics(pass_, residual_conv1x1(block_sparse(32, 32, 8, 0.3)))
    assert result.stats["residual_adds"] == 0 and not _kernels(result.module)[0].residual


def test_flop_estimate_counts_the_stored_blocks():
    """TIR's estimate cannot count loops over `indptr`; the recipe can: 2 flops per stored
    weight per row, the dense layer's count times the block density."""
    from graphopt import _tvm

    w = block_sparse(64, 32, 8, 0.25)
    mod = SPARSIFY.run(conv1x1_nhwc(w, hw=(7, 7), clip=False)).module
    rows, k, n = 49, 64, 32
    assert _tvm.estimate_flops(mod) == 2 * rows * k * n * block_density(w, 8)


@pytest.mark.parametrize("erf_form", [True, False], ids=["erf_form", "relax_gelu"])
def test_gelu_folded_into_the_op(erf_form):
    mod = dense_gelu(block_sparse(64, 48, 8, 0.3), erf_form=erf_form)
    result = check_numerics(SPARSIFY, mod)
    assert result.stats["gelus"] == 1
    (spec,) = _kernels(result.module)
    assert spec.gelu
    ops = [op_name(b.value) for b in result.module["main"].body.blocks[0].bindings]
    assert [o for o in ops if o] == ["relax.call_tir"]
