"""dce: structure, does-not-fire, numerics, counters."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R

from graphopt.pass_infra import make_pass
from graphopt.testing import check_no_change, check_numerics, check_rewrite


@I.ir_module
class WithDeadCode:
    @R.function
    def main(x: R.Tensor((4,), "float32"), y: R.Tensor((4,), "float32")):
        with R.dataflow():
            a = R.add(x, y)
            b = R.multiply(x, y)
            c = R.exp(b)  # noqa: F841 - dead on purpose
            R.output(a)
        return a

    @R.function(private=True)
    def unused(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
        return x


@I.ir_module
class WithoutDeadCode:
    @R.function
    def main(x: R.Tensor((4,), "float32"), y: R.Tensor((4,), "float32")) -> R.Tensor(
        (4,), "float32"
    ):
        with R.dataflow():
            a = R.add(x, y)
            R.output(a)
        return a


@I.ir_module
class AllUsed:
    @R.function
    def main(x: R.Tensor((4,), "float32"), y: R.Tensor((4,), "float32")):
        with R.dataflow():
            a = R.add(x, y)
            b = R.multiply(a, y)
            R.output(b)
        return b


def test_dead_bindings_and_functions_removed():
    result = check_rewrite(make_pass("dce"), WithDeadCode, WithoutDeadCode)
    assert result.stats == {"calls_removed": 2}  # multiply and exp


def test_does_not_fire_when_everything_is_used():
    assert check_no_change(make_pass("dce"), AllUsed).stats == {"calls_removed": 0}


def test_numerics():
    check_numerics(make_pass("dce"), WithDeadCode, rtol=0)
