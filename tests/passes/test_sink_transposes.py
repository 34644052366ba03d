"""sink-transposes: elementwise ops computed before a transpose, so transpose pairs cancel."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt.pass_infra import make_pass
from graphopt.testing import (
    apply_checked,
    check_no_change,
    check_numerics,
    single_input_module,
)

NCHW, NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def _permutes(mod: tvm.IRModule) -> int:
    from graphopt import _tvm

    return sum(
        1
        for c in _tvm.iter_relax_calls(mod)
        if isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.permute_dims"
    )


def _block(bb, x, residual: bool):
    """NHWC x -> NCHW -> + bias [1, C, 1, 1] -> clip -> (+ itself: a residual) -> NHWC."""
    rng = np.random.default_rng(0)
    bias = relax.const(rng.standard_normal((1, 8, 1, 1)).astype(np.float32))
    a = bb.emit(R.permute_dims(x, NCHW))
    b = bb.emit(R.add(a, bias))
    c = bb.emit(R.clip(b, 0.0, 6.0))
    c = bb.emit(R.maximum(c, relax.const(np.float32(0.5))))
    if residual:
        c = bb.emit(R.add(c, a))
    return R.multiply(R.permute_dims(c, NHWC), relax.const(np.float32(2)))


def test_pairs_cancel_through_bias_clip_and_residual():
    for residual in (False, True):
        mod = single_input_module((1, 5, 5, 8), lambda bb, x, r=residual: _block(bb, x, r))
        result = check_numerics(make_pass("sink-transposes"), mod, rtol=0)
        assert _permutes(result.module) == 0
        assert result.stats["ops_sunk"] == 3 + residual
        assert result.stats["transposes_removed"] == 1


def test_identity_transposes_drop():
    mod = single_input_module((2, 3), lambda bb, x: R.exp(R.permute_dims(x, [0, 1])))
    result = check_numerics(make_pass("sink-transposes"), mod, rtol=0)
    assert _permutes(result.module) == 0 and result.stats["transposes_removed"] == 1


def test_other_layout_consumers_keep_theirs():
    """A non-elementwise consumer of the NCHW value keeps the transpose it needs."""

    def build(bb, x):
        a = bb.emit(R.add(R.permute_dims(x, NCHW), relax.const(np.float32(1))))
        return R.sum(a, axis=[2])  # reads NCHW

    mod = single_input_module((1, 4, 4, 8), build)
    result = check_numerics(make_pass("sink-transposes"), mod, rtol=0)
    assert _permutes(result.module) == 1


def test_no_transpose_no_change():
    mod = single_input_module((2, 3), lambda bb, x: R.add(x, relax.const(np.float32(1))))
    check_no_change(make_pass("sink-transposes"), mod)


def test_every_relax_function_not_only_main():
    """The int8 speed check builds single-layer modules with no `main`."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 5, 8), "float32"))
    with bb.function("layer", [x]):
        with bb.dataflow():
            out = bb.emit_output(_block(bb, x, residual=True))
        bb.emit_func_output(out)
    result = apply_checked(make_pass("sink-transposes"), bb.get())
    assert result.modified and _permutes(result.module) == 0


def _pool_tail(bb, x, keepdims: bool):
    """NHWC x -> NCHW -> + bias -> clip -> mean over H, W -> [N, C] (a global average pool)."""
    rng = np.random.default_rng(1)
    bias = relax.const(rng.standard_normal((1, 8, 1, 1)).astype(np.float32))
    a = bb.emit(R.permute_dims(x, NCHW))
    c = bb.emit(R.clip(R.add(a, bias), 0.0, 6.0))
    pooled = bb.emit(R.mean(c, axis=[2, 3], keepdims=keepdims))
    return R.reshape(pooled, (2, 8)) if keepdims else R.multiply(pooled, pooled)


def test_global_pool_in_the_source_layout():
    """mean over H, W of NCHW(x) is the mean over x's H, W: no transpose of the map is left."""
    for keepdims in (True, False):
        mod = single_input_module((2, 5, 5, 8), lambda bb, x, k=keepdims: _pool_tail(bb, x, k))
        result = check_numerics(make_pass("sink-transposes"), mod, rtol=0)
        assert _permutes(result.module) == 0
        assert result.stats["reductions_sunk"] == 1 and result.stats["ops_sunk"] == 2
        assert result.stats["transposes_removed"] == 1  # at the reshape, or the mean itself


def test_reduction_left_as_a_transpose():
    """A reduction whose result keeps other axes out of order stays one small transpose."""

    def build(bb, x):
        pooled = bb.emit(R.sum(R.permute_dims(x, NCHW), axis=[2]))  # [N, C, W]
        return R.permute_dims(pooled, [0, 2, 1])  # [N, W, C]: x summed over H

    mod = single_input_module((1, 4, 3, 8), build)
    result = check_numerics(make_pass("sink-transposes"), mod, rtol=0)
    assert _permutes(result.module) == 0 and result.stats["reductions_sunk"] == 1


def test_reduction_in_another_order_declined():
    """Reduced axes that the transpose reorders would sum in another order: left alone."""

    def build(bb, x):
        return R.sum(R.permute_dims(x, [0, 2, 1]), axis=[1, 2])

    check_no_change(make_pass("sink-transposes"), single_input_module((2, 3, 4), build))


def test_reshape_through_unit_axes_only():
    """[1, 1, 1, C] -> [1, C, 1, 1] moves only unit axes: a reshape of it reads x as it is."""

    def flat(bb, x):
        return R.reshape(R.permute_dims(x, NCHW), (1, 8 * x.ty.shape[1] * x.ty.shape[2]))

    sink = make_pass("sink-transposes")
    result = check_numerics(sink, single_input_module((1, 1, 1, 8), flat), rtol=0)
    assert _permutes(result.module) == 0
    moved = single_input_module((1, 2, 1, 8), flat)  # H of 2: the order of the elements moves
    assert _permutes(check_numerics(sink, moved, rtol=0).module) == 1


def test_reshape_through_unit_axes_with_a_symbolic_batch():
    """[n, 1, 1, C] -> [n, C, 1, 1] keeps n before C: the reshape to [n, C] reads x as it is."""
    n = tvm.tirx.Var("n", "int64")

    def flat(bb, x):
        return R.reshape(R.permute_dims(x, NCHW), relax.ShapeExpr([n, 8]))

    result = apply_checked(make_pass("sink-transposes"), single_input_module((n, 1, 1, 8), flat))
    assert result.modified and _permutes(result.module) == 0
