"""fold-constants: structure, size limit, shape arithmetic, does-not-fire, numerics."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from graphopt import _tvm
from graphopt.pass_infra import make_pass
from graphopt.testing import apply_checked, check_no_change, check_numerics, check_rewrite

W = np.arange(6, dtype="float32").reshape(2, 3)


@I.ir_module
class WeightTranspose:
    @R.function
    def main(x: R.Tensor((4, 3), "float32")) -> R.Tensor((4, 2), "float32"):
        with R.dataflow():
            wt = R.permute_dims(R.const(W), [1, 0])
            y = R.matmul(x, wt)
            R.output(y)
        return y


@I.ir_module
class WeightTransposeFolded:
    @R.function
    def main(x: R.Tensor((4, 3), "float32")) -> R.Tensor((4, 2), "float32"):
        with R.dataflow():
            wt = R.const(W.T.copy())
            y = R.matmul(x, wt)
            R.output(y)
        return y


@I.ir_module
class ShapeArithmetic:
    """What ONNX Shape -> Reshape imports to: the target shape computed from shape_of."""

    @R.function
    def main(x: R.Tensor((2, 3, 4), "float32")) -> R.Tensor((6, 4), "float32"):
        with R.dataflow():
            s = R.shape_of(x)
            t = R.shape_to_tensor(s)
            dims = R.strided_slice(t, axes=[0], begin=[1], end=[3])
            both = R.concat([R.const([7], "int64"), R.astype(dims, "int64")], axis=0)
            y = R.reshape(x, (6, 4))
            z = R.add(y, R.astype(R.sum(both), "float32"))
            R.output(z)
        return z


@I.ir_module
class NothingConstant:
    @R.function
    def main(x: R.Tensor((4, 3), "float32"), w: R.Tensor((3, 2), "float32")):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.nn.relu(y)
            R.output(z)
        return z


def test_weight_transpose_is_folded():
    result = check_rewrite(make_pass("fold-constants"), WeightTranspose, WeightTransposeFolded)
    assert result.stats == {"bindings_folded": 1}


def test_shape_arithmetic_folds_to_constants():
    result = check_numerics(make_pass("fold-constants"), ShapeArithmetic)
    ops = _tvm.op_counts(result.module)
    assert "relax.shape_of" not in ops and "relax.concat" not in ops and "relax.sum" not in ops
    assert ops == {"relax.reshape": 1, "relax.add": 1}


def test_size_limit_keeps_large_results_unfolded():
    small = make_pass("fold-constants", {"max_elements": "5"})
    check_no_change(small, WeightTranspose)  # the transposed weight has 6 elements
    big = make_pass("fold-constants", {"max_elements": "6"})
    assert apply_checked(big, WeightTranspose).modified


def test_does_not_fire_without_constants():
    assert check_no_change(make_pass("fold-constants"), NothingConstant).stats == {
        "bindings_folded": 0
    }


def test_numerics_weight_transpose():
    check_numerics(make_pass("fold-constants"), WeightTranspose, rtol=0)
