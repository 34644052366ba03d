"""fold-batchnorm: structure, does-not-fire, numerics, counters."""

from __future__ import annotations

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
class NoBN:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32"), w: R.Tensor((4, 3, 3, 3), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            y = R.nn.relu(c)
            R.output(y)
        return y


def test_batchnorm_removed_and_counted():
    result = apply_checked(make_pass("fold-batchnorm"), ConvBN)
    assert result.modified
    assert "relax.nn.batch_norm" not in result.module.script()
    assert result.stats["folded_into_conv"] + result.stats["decomposed"] == 1


def test_numerics_match():
    check_numerics(make_pass("fold-batchnorm"), ConvBN, rtol=1e-5)


def test_does_not_fire_without_batchnorm():
    result = check_no_change(make_pass("fold-batchnorm"), NoBN)
    assert result.stats == {"folded_into_conv": 0, "decomposed": 0}
