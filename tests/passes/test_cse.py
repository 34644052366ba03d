"""cse: structure, does-not-fire, numerics, counters."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R

from graphopt.pass_infra import make_pass
from graphopt.testing import check_no_change, check_numerics, check_rewrite


@I.ir_module
class Repeated:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 8), "float32")):
        with R.dataflow():
            a = R.matmul(x, w)
            b = R.matmul(x, w)
            c = R.exp(a)
            d = R.exp(b)
            y = R.add(c, d)
            R.output(y)
        return y


@I.ir_module
class RepeatedOnce:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 8), "float32")) -> R.Tensor(
        (4, 8), "float32"
    ):
        with R.dataflow():
            a = R.matmul(x, w)
            c = R.exp(a)
            y = R.add(c, c)
            R.output(y)
        return y


@I.ir_module
class Distinct:
    """Same op, different attributes or operands: nothing to share."""

    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 8), "float32")):
        with R.dataflow():
            a = R.matmul(x, w)
            b = R.matmul(a, w)
            c = R.sum(b, axis=[0])
            d = R.sum(b, axis=[1])
            y = (c, d)
            R.output(y)
        return y


def test_repeated_calls_computed_once():
    result = check_rewrite(make_pass("cse"), Repeated, RepeatedOnce)
    assert result.stats == {"calls_removed": 2}  # the second matmul and the second exp


def test_does_not_fire_on_distinct_calls():
    assert check_no_change(make_pass("cse"), Distinct).stats == {"calls_removed": 0}


def test_numerics():
    check_numerics(make_pass("cse"), Repeated, rtol=0)
