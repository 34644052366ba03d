"""simplify: identities, reshape/transpose chains, casts, dropout; does-not-fire; numerics; ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

import graphopt
from graphopt import _tvm
from graphopt.frontend import import_onnx
from graphopt.instrument import max_relative_error
from graphopt.pass_infra import make_pass
from graphopt.reference import ort_run, ort_session
from graphopt.testing import check_no_change, check_numerics, check_rewrite

ZERO_STATS = {
    "identities": 0,
    "casts_removed": 0,
    "reshapes_removed": 0,
    "reshapes_merged": 0,
    "transposes_removed": 0,
    "transposes_merged": 0,
    "broadcasts_removed": 0,
    "dropouts_removed": 0,
}


def _stats(**nonzero: int) -> dict[str, int]:
    return {**ZERO_STATS, **nonzero}


# --- identity arithmetic ----------------------------------------------------------------------


@I.ir_module
class Arithmetic:
    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        with R.dataflow():
            a = R.multiply(x, R.const(1.0, "float32"))
            b = R.add(R.const(np.zeros(4, "float32")), a)  # broadcasts, but to x's own shape
            c = R.subtract(b, R.const(0.0, "float32"))
            d = R.divide(c, R.const(np.ones((1, 4), "float32")))
            e = R.negative(R.negative(d))
            f = R.multiply(R.const(1.0, "float32"), e)
            g = R.add(f, R.const(np.zeros((3, 4), "float32")))
            y = R.nn.relu(g)
            R.output(y)
        return y


@I.ir_module
class ArithmeticSimplified:
    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        with R.dataflow():
            y = R.nn.relu(x)
            R.output(y)
        return y


@I.ir_module
class OutputIsNoOp:
    """The function's result is `x * 1` of a parameter: the function returns x itself."""

    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        with R.dataflow():
            y = R.multiply(x, R.const(1.0, "float32"))
            R.output(y)
        return y


@I.ir_module
class OutputIsNoOpSimplified:
    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        return x


@I.ir_module
class NotIdentities:
    """None of these is a no-op: the constants are not neutral, sit on the wrong side, or
    broadcast x to a bigger shape."""

    @R.function
    def main(x: R.Tensor((4,), "float32"), z: R.Tensor((3, 4), "float32")) -> R.Tuple(
        R.Tensor((3, 4), "float32"), R.Tensor((4,), "float32")
    ):
        with R.dataflow():
            a = R.multiply(x, R.const(np.ones((3, 4), "float32")))  # (4,) -> (3, 4)
            b = R.add(R.const(np.zeros((3, 1), "float32")), x)  # (4,) -> (3, 4)
            c = R.multiply(z, R.const(2.0, "float32"))
            d = R.subtract(R.const(0.0, "float32"), x)  # 0 - x is -x
            e = R.divide(R.const(1.0, "float32"), x)  # 1 / x
            f = R.add(z, R.const(np.array([0.0, 0.0, 1.0, 0.0], "float32")))  # not all zeros
            g = R.negative(x)  # a single negation stays
            s = R.add(R.add(a, b), R.add(c, f))
            t = R.add(R.add(d, e), g)
            R.output(s, t)
        return (s, t)


@I.ir_module
class OutputOfDataflowVar:
    """`y = lv * 1` is the block's output: the producer of lv takes over y's place."""

    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        with R.dataflow():
            lv = R.nn.relu(x)
            y = R.multiply(lv, R.const(np.ones((3, 4), "float32")))
            R.output(y)
        return y


@I.ir_module
class Symbolic:
    @R.function
    def main(x: R.Tensor(("n", 4), "float32"), w: R.Tensor(("n", 1), "float32")) -> R.Tensor(
        ("n", 4), "float32"
    ):
        n = T.int64()
        with R.dataflow():
            a = R.multiply(x, R.const(np.ones(4, "float32")))
            b = R.reshape(a, R.shape([n, 4]))
            c = R.multiply(w, R.const(np.ones((1, 4), "float32")))  # (n, 1) -> (n, 4): stays
            y = R.add(b, c)
            R.output(y)
        return y


@I.ir_module
class SymbolicSimplified:
    @R.function
    def main(x: R.Tensor(("n", 4), "float32"), w: R.Tensor(("n", 1), "float32")) -> R.Tensor(
        ("n", 4), "float32"
    ):
        with R.dataflow():
            c = R.multiply(w, R.const(np.ones((1, 4), "float32")))
            y = R.add(x, c)
            R.output(y)
        return y


@I.ir_module
class WithPrimitive:
    """Functions marked Primitive (fused kernels) are left exactly as they are."""

    @R.function(private=True)
    def fused(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        R.func_attr({"Primitive": True})
        with R.dataflow():
            a = R.multiply(x, R.const(1.0, "float32"))
            y = R.nn.relu(a)
            R.output(y)
        return y

    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        cls = WithPrimitive
        with R.dataflow():
            a = R.multiply(x, R.const(1.0, "float32"))
            y = cls.fused(a)
            R.output(y)
        return y


@I.ir_module
class WithPrimitiveSimplified:
    @R.function(private=True)
    def fused(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        R.func_attr({"Primitive": True})
        with R.dataflow():
            a = R.multiply(x, R.const(1.0, "float32"))
            y = R.nn.relu(a)
            R.output(y)
        return y

    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        cls = WithPrimitiveSimplified
        with R.dataflow():
            y = cls.fused(x)
            R.output(y)
        return y


def test_identity_arithmetic_removed():
    result = check_rewrite(make_pass("simplify"), Arithmetic, ArithmeticSimplified)
    assert result.stats == _stats(identities=7)


def test_function_that_becomes_its_input():
    result = check_rewrite(make_pass("simplify"), OutputIsNoOp, OutputIsNoOpSimplified)
    assert result.stats == _stats(identities=1)


def test_output_no_op_of_a_dataflow_var():
    result = check_rewrite(make_pass("simplify"), OutputOfDataflowVar, ArithmeticSimplified)
    assert result.stats == _stats(identities=1)


def test_symbolic_shapes():
    result = check_rewrite(make_pass("simplify"), Symbolic, SymbolicSimplified)
    assert result.stats == _stats(identities=1, reshapes_removed=1)


def test_primitive_functions_untouched():
    result = check_rewrite(make_pass("simplify"), WithPrimitive, WithPrimitiveSimplified)
    assert result.stats == _stats(identities=1)


def test_broadcasting_and_non_neutral_constants_untouched():
    assert check_no_change(make_pass("simplify"), NotIdentities).stats == ZERO_STATS


# --- reshape chains -----------------------------------------------------------------------------


@I.ir_module
class ReshapeChain:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((6, 4), "float32"):
        with R.dataflow():
            a = R.reshape(x, (2, 12))
            b = R.reshape(a, (24,))
            c = R.reshape(b, (6, 4))
            y = R.nn.relu(c)
            R.output(y)
        return y


@I.ir_module
class ReshapeChainMerged:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((6, 4), "float32"):
        with R.dataflow():
            c = R.reshape(x, (6, 4))
            y = R.nn.relu(c)
            R.output(y)
        return y


@I.ir_module
class ReshapeNoOps:
    """A reshape to x's own shape, expand_dims + squeeze of the same axis, and a reshape pair
    that cancels: all three are x again."""

    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
        with R.dataflow():
            a = R.reshape(x, (2, 3, 4))
            b = R.expand_dims(a, axis=[1])
            c = R.squeeze(b, axis=[1])
            d = R.reshape(c, (6, 4))
            e = R.reshape(d, (2, 3, 4))
            y = R.nn.relu(e)
            R.output(y)
        return y


@I.ir_module
class ReshapeNoOpsRemoved:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
        with R.dataflow():
            y = R.nn.relu(x)
            R.output(y)
        return y


@I.ir_module
class ExpandSqueezeOtherAxis:
    """expand_dims(x, 0) then squeeze(axis=2) of x: (3, 1): one reshape of x to (1, 3)."""

    @R.function
    def main(x: R.Tensor((3, 1), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            a = R.expand_dims(x, axis=[0])
            b = R.squeeze(a, axis=[2])
            y = R.nn.relu(b)
            R.output(y)
        return y


@I.ir_module
class ExpandSqueezeOtherAxisMerged:
    @R.function
    def main(x: R.Tensor((3, 1), "float32")) -> R.Tensor((1, 3), "float32"):
        with R.dataflow():
            b = R.reshape(x, (1, 3))
            y = R.nn.relu(b)
            R.output(y)
        return y


@I.ir_module
class ReshapeAlone:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((6, 4), "float32"):
        with R.dataflow():
            a = R.reshape(x, (6, 4))
            y = R.nn.relu(a)
            R.output(y)
        return y


def test_reshape_chain_merged():
    result = check_rewrite(make_pass("simplify"), ReshapeChain, ReshapeChainMerged)
    assert result.stats == _stats(reshapes_merged=2)


def test_reshape_no_ops_removed():
    result = check_rewrite(make_pass("simplify"), ReshapeNoOps, ReshapeNoOpsRemoved)
    # reshape to own shape, squeeze(expand_dims), reshape(reshape) back to x's shape
    assert result.stats == _stats(reshapes_removed=3)


def test_expand_dims_squeeze_of_another_axis_becomes_one_reshape():
    result = check_rewrite(
        make_pass("simplify"), ExpandSqueezeOtherAxis, ExpandSqueezeOtherAxisMerged
    )
    assert result.stats == _stats(reshapes_merged=1)


def test_single_reshape_untouched():
    check_no_change(make_pass("simplify"), ReshapeAlone)


# --- transposes ---------------------------------------------------------------------------------


@I.ir_module
class TransposePair:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
        with R.dataflow():
            a = R.permute_dims(x, [0, 2, 1])
            b = R.permute_dims(a, [0, 2, 1])
            c = R.permute_dims(b, [0, 1, 2])  # identity
            y = R.nn.relu(c)
            R.output(y)
        return y


@I.ir_module
class TransposePairRemoved:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
        with R.dataflow():
            y = R.nn.relu(x)
            R.output(y)
        return y


@I.ir_module
class TransposeCompose:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((3, 4, 2), "float32"):
        with R.dataflow():
            a = R.permute_dims(x, [1, 0, 2])  # (3, 2, 4)
            b = R.permute_dims(a, [0, 2, 1])  # (3, 4, 2)
            y = R.nn.relu(b)
            R.output(y)
        return y


@I.ir_module
class TransposeComposed:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((3, 4, 2), "float32"):
        with R.dataflow():
            b = R.permute_dims(x, [1, 2, 0])
            y = R.nn.relu(b)
            R.output(y)
        return y


@I.ir_module
class TransposeReversedTwice:
    """permute_dims without axes reverses them; twice is the identity."""

    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 3, 4), "float32"):
        with R.dataflow():
            a = R.permute_dims(x)
            b = R.permute_dims(a)
            y = R.nn.relu(b)
            R.output(y)
        return y


@I.ir_module
class TransposeSharedInner:
    """The inner transpose has another use: it stays, the outer one still cancels."""

    @R.function
    def main(x: R.Tensor((4, 4), "float32")) -> R.Tensor((4, 4), "float32"):
        with R.dataflow():
            a = R.permute_dims(x, [1, 0])
            b = R.permute_dims(a, [1, 0])
            y = R.add(a, b)
            R.output(y)
        return y


@I.ir_module
class TransposeSharedInnerSimplified:
    @R.function
    def main(x: R.Tensor((4, 4), "float32")) -> R.Tensor((4, 4), "float32"):
        with R.dataflow():
            a = R.permute_dims(x, [1, 0])
            y = R.add(a, x)
            R.output(y)
        return y


@I.ir_module
class TransposeAlone:
    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((2, 4, 3), "float32"):
        with R.dataflow():
            a = R.permute_dims(x, [0, 2, 1])
            y = R.nn.relu(a)
            R.output(y)
        return y


def test_transpose_pair_cancels():
    result = check_rewrite(make_pass("simplify"), TransposePair, TransposePairRemoved)
    assert result.stats == _stats(transposes_removed=2)


def test_transposes_compose_into_one():
    result = check_rewrite(make_pass("simplify"), TransposeCompose, TransposeComposed)
    assert result.stats == _stats(transposes_merged=1)


def test_reversing_twice_cancels():
    result = check_rewrite(make_pass("simplify"), TransposeReversedTwice, TransposePairRemoved)
    assert result.stats == _stats(transposes_removed=1)


def test_shared_inner_transpose_kept():
    result = check_rewrite(
        make_pass("simplify"), TransposeSharedInner, TransposeSharedInnerSimplified
    )
    assert result.stats == _stats(transposes_removed=1)


def test_single_transpose_untouched():
    check_no_change(make_pass("simplify"), TransposeAlone)


# --- casts, broadcasts, dropout -----------------------------------------------------------------


@I.ir_module
class NoOpCastAndBroadcast:
    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float16"):
        with R.dataflow():
            a = R.astype(x, "float32")
            b = R.broadcast_to(a, (3, 4))
            c = R.astype(b, "float16")  # a real cast: stays
            y = R.nn.relu(c)
            R.output(y)
        return y


@I.ir_module
class NoOpCastAndBroadcastRemoved:
    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float16"):
        with R.dataflow():
            c = R.astype(x, "float16")
            y = R.nn.relu(c)
            R.output(y)
        return y


@I.ir_module
class RealCastAndBroadcast:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((3, 4), "float16"):
        with R.dataflow():
            a = R.broadcast_to(x, (3, 4))
            y = R.astype(a, "float16")
            R.output(y)
        return y


@I.ir_module
class Dropout:
    """What TVM's importer makes of ONNX Dropout (without graphopt's ONNX clean-up)."""

    @R.function
    def main(x: R.Tensor((3, 4), "float32")) -> R.Tensor((3, 4), "float32"):
        with R.dataflow():
            d = R.nn.dropout(x, rate=0.5)
            a = d[0]
            y = R.nn.relu(a)
            R.output(y)
        return y


def test_no_op_cast_and_broadcast_removed():
    result = check_rewrite(make_pass("simplify"), NoOpCastAndBroadcast, NoOpCastAndBroadcastRemoved)
    assert result.stats == _stats(casts_removed=1, broadcasts_removed=1)


def test_real_cast_and_broadcast_untouched():
    check_no_change(make_pass("simplify"), RealCastAndBroadcast)


def test_dropout_removed():
    result = check_rewrite(make_pass("simplify"), Dropout, ArithmeticSimplified)
    assert result.stats == _stats(dropouts_removed=1)


# --- numerics on every Before module ------------------------------------------------------------

BEFORE = [
    Arithmetic,
    OutputIsNoOp,
    OutputOfDataflowVar,
    WithPrimitive,
    NotIdentities,
    ReshapeChain,
    ReshapeNoOps,
    ExpandSqueezeOtherAxis,
    TransposePair,
    TransposeCompose,
    TransposeReversedTwice,
    TransposeSharedInner,
    NoOpCastAndBroadcast,
    Dropout,
]


@pytest.mark.parametrize("mod", BEFORE, ids=lambda m: m.__name__ if hasattr(m, "__name__") else "")
def test_numerics(mod):
    check_numerics(make_pass("simplify"), mod, rtol=0)


# --- ONNX level ---------------------------------------------------------------------------------


def _onnx_model() -> onnx.ModelProto:
    """Identity, Dropout, Mul by 1, Transpose pair, Reshape pair, Add 0, a float->float Cast,
    around one Relu."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b"]),
        helper.make_node("Mul", ["b", "one"], ["c"]),
        helper.make_node("Transpose", ["c"], ["d"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["d"], ["e"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["e"], ["r"]),
        helper.make_node("Reshape", ["r", "s1"], ["g"]),
        helper.make_node("Reshape", ["g", "s2"], ["h"]),
        helper.make_node("Add", ["h", "zero"], ["k"]),
        helper.make_node("Cast", ["k"], ["y"], to=f),
    ]
    inits = [
        numpy_helper.from_array(np.ones((1,), np.float32), "one"),
        numpy_helper.from_array(np.zeros((4,), np.float32), "zero"),
        numpy_helper.from_array(np.array([2, 12], np.int64), "s1"),
        numpy_helper.from_array(np.array([6, 4], np.int64), "s2"),
    ]
    graph = helper.make_graph(
        nodes,
        "simplify",
        [helper.make_tensor_value_info("x", f, [2, 3, 4])],
        [helper.make_tensor_value_info("y", f, [6, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_identity_dropout_and_cast_never_reach_the_pass():
    """TVM's importer drops Identity itself; graphopt's ONNX clean-up already folds Dropout and
    the no-op Cast. Without the clean-up they arrive as R.nn.dropout and R.astype, and the pass
    removes them."""
    model = _onnx_model()
    ops = _tvm.op_counts(import_onnx(model).mod)
    assert "relax.nn.dropout" not in ops and "relax.astype" not in ops
    assert ops["relax.permute_dims"] == 2 and ops["relax.reshape"] == 2
    raw = import_onnx(model, cleanup=False).mod
    raw_ops = _tvm.op_counts(raw)
    assert raw_ops["relax.nn.dropout"] == 1 and raw_ops["relax.astype"] == 1
    result = check_numerics(make_pass("simplify"), raw)
    assert result.stats == _stats(
        identities=2, casts_removed=1, transposes_removed=1, reshapes_merged=1, dropouts_removed=1
    )
    assert _tvm.op_counts(result.module) == {"relax.nn.relu": 1, "relax.reshape": 1}


def test_onnx_model_matches_onnxruntime(tmp_path):
    model = _onnx_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    art = graphopt.compile(model, tmp_path / "a", pipeline="simplify,dce")
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = ort_run(ort_session(path), {"x": x})
    got = art.run({"x": x})
    assert max_relative_error([ref["y"]], [got["y"]]) <= 1e-5
    report = art.manifest["report"]
    (row,) = [r for r in report["passes"] if r["pass"] == "simplify"]
    assert row["modified"]
    assert row["stats"] == _stats(identities=2, transposes_removed=1, reshapes_merged=1)
    assert report["ops_after_passes"] == {"relax.nn.relu": 1, "relax.reshape": 1}
