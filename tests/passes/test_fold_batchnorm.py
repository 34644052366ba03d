"""fold-batchnorm: structure, does-not-fire, numerics, counters."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from graphopt.pass_infra import make_pass
from graphopt.testing import apply_checked, check_no_change, check_numerics


@I.ir_module
class ConvBN:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((4, 3, 3, 3), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            g = R.const([1.0, 2.0, 0.5, -1.0], "float32")
            b = R.const([0.1, 0.2, 0.3, 0.4], "float32")
            m = R.const([0.0, 1.0, -1.0, 0.5], "float32")
            v = R.const([1.0, 4.0, 0.25, 2.0], "float32")
            bn = R.nn.batch_norm(c, g, b, m, v, axis=1, epsilon=1e-5, training=False)
            y = bn[0]
            R.output(y)
        return y


@I.ir_module
class ConvBiasBN:
    """The ONNX export shape: conv, bias add, then batch-norm (TVM's own fold misses it)."""

    @R.function
    def main(x: R.Tensor((2, 3, 9, 7), "float32")):
        with R.dataflow():
            w = R.const(np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype("float32"))
            c = R.nn.conv2d(x, w, strides=[2, 2], padding=[1, 0, 1, 0])
            c2 = R.add(c, R.const(np.arange(4, dtype="float32").reshape(1, 4, 1, 1)))
            g = R.const([1.0, 2.0, 0.5, -1.0], "float32")
            b = R.const([0.1, 0.2, 0.3, 0.4], "float32")
            m = R.const([0.0, 1.0, -1.0, 0.5], "float32")
            v = R.const([1.0, 4.0, 0.25, 2.0], "float32")
            bn = R.nn.batch_norm(c2, g, b, m, v, axis=1, epsilon=1e-3, training=False)
            y = R.nn.relu(bn[0])
            R.output(y)
        return y


@I.ir_module
class MatmulBN:
    @R.function
    def main(x: R.Tensor((5, 6), "float32")):
        with R.dataflow():
            w = R.const(np.random.default_rng(2).standard_normal((6, 3)).astype("float32"))
            h = R.matmul(x, w)
            g = R.const([1.5, 2.0, 0.5], "float32")
            b = R.const([0.1, -0.2, 0.3], "float32")
            m = R.const([0.2, 1.0, -1.0], "float32")
            v = R.const([1.0, 0.5, 0.25], "float32")
            bn = R.nn.batch_norm(h, g, b, m, v, axis=1, epsilon=1e-5, training=False)
            y = bn[0]
            R.output(y)
        return y


@I.ir_module
class NoBN:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((4, 3, 3, 3), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            y = R.nn.relu(c)
            R.output(y)
        return y


def test_batchnorm_removed():
    result = apply_checked(make_pass("fold-batchnorm"), ConvBN)
    assert result.modified
    assert "batch_norm" not in result.module.script()


def test_numerics_match():
    check_numerics(make_pass("fold-batchnorm"), ConvBN, rtol=1e-5)


def test_does_not_fire_without_batchnorm():
    result = check_no_change(make_pass("fold-batchnorm"), NoBN)
    assert result.stats == {"folded_into_conv": 0, "folded_into_matmul": 0, "decomposed": 0}


def _ops(mod):
    from graphopt._tvm import op_counts

    return op_counts(mod)


def test_folds_through_bias_add():
    result = check_numerics(make_pass("fold-batchnorm"), ConvBiasBN, rtol=1e-5)
    assert result.stats == {"folded_into_conv": 1, "folded_into_matmul": 0, "decomposed": 0}
    ops = _ops(result.module)
    assert ops == {"relax.nn.conv2d": 1, "relax.add": 1, "relax.nn.relu": 1}


def test_folds_into_matmul():
    result = check_numerics(make_pass("fold-batchnorm"), MatmulBN, rtol=1e-5)
    assert result.stats["folded_into_matmul"] == 1
    assert _ops(result.module) == {"relax.matmul": 1, "relax.add": 1}


def test_non_constant_weights_are_decomposed_not_folded():
    """conv weights are a function parameter here, so folding would be wrong: decompose."""
    result = check_numerics(make_pass("fold-batchnorm"), ConvBN, rtol=1e-5)
    assert result.stats == {"folded_into_conv": 0, "folded_into_matmul": 0, "decomposed": 1}
