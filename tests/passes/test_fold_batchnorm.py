"""fold-batchnorm: structure, does-not-fire, numerics, counters; also the decomposed form."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from graphopt.pass_infra import make_pass
from graphopt.testing import apply_checked, check_no_change, check_numerics, check_rewrite


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
    assert result.stats == {
        "folded_into_conv": 0,
        "folded_into_matmul": 0,
        "affine_folded": 0,
        "decomposed": 0,
    }


def _ops(mod):
    from graphopt._tvm import op_counts

    return op_counts(mod)


def test_folds_through_bias_add():
    result = check_numerics(make_pass("fold-batchnorm"), ConvBiasBN, rtol=1e-5)
    assert result.stats == {
        "folded_into_conv": 1,
        "folded_into_matmul": 0,
        "affine_folded": 0,
        "decomposed": 0,
    }
    ops = _ops(result.module)
    assert ops == {"relax.nn.conv2d": 1, "relax.add": 1, "relax.nn.relu": 1}


def test_folds_into_matmul():
    result = check_numerics(make_pass("fold-batchnorm"), MatmulBN, rtol=1e-5)
    assert result.stats["folded_into_matmul"] == 1
    assert _ops(result.module) == {"relax.matmul": 1, "relax.add": 1}


def test_non_constant_weights_are_decomposed_not_folded():
    """conv weights are a function parameter here, so folding would be wrong: decompose."""
    result = check_numerics(make_pass("fold-batchnorm"), ConvBN, rtol=1e-5)
    assert result.stats == {
        "folded_into_conv": 0,
        "folded_into_matmul": 0,
        "affine_folded": 0,
        "decomposed": 1,
    }


# --- Before / Expected, with the folded constants computed as the docstring says -----------

RNG = np.random.default_rng(3)
W = RNG.standard_normal((4, 3, 3, 3)).astype("float32")
B = RNG.standard_normal(4).astype("float32")
G, BETA = np.float32([1.0, 2.0, 0.5, -1.0]), np.float32([0.1, 0.2, 0.3, 0.4])
MEAN, VAR = np.float32([0.0, 1.0, -1.0, 0.5]), np.float32([1.0, 4.0, 0.25, 2.0])
S = G.astype(np.float64) / np.sqrt(VAR.astype(np.float64) + 1e-5)
W_BN = (W * S.reshape(-1, 1, 1, 1)).astype("float32")
B_BN = ((B - MEAN.astype(np.float64)) * S + BETA).astype("float32").reshape(1, 4, 1, 1)
SCALE = RNG.uniform(0.5, 2.0, (1, 4, 1, 1)).astype("float32")
SHIFT = RNG.standard_normal((1, 4, 1, 1)).astype("float32")
W_AFF = (W * SCALE.reshape(-1).astype(np.float64).reshape(-1, 1, 1, 1)).astype("float32")
B_AFF = (B.astype(np.float64) * SCALE.reshape(-1) + SHIFT.reshape(-1)).astype("float32")


@I.ir_module
class ConvBiasBNConst:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1, 1, 1])
            d = R.add(c, R.const(B.reshape(1, 4, 1, 1)))
            bn = R.nn.batch_norm(
                d,
                R.const(G),
                R.const(BETA),
                R.const(MEAN),
                R.const(VAR),
                axis=1,
                epsilon=1e-5,
                training=False,
            )
            y = R.nn.relu(bn[0])
            R.output(y)
        return y


@I.ir_module
class ConvBiasBNFolded:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_BN), padding=[1, 1, 1, 1], out_dtype="float32")
            d = R.add(c, R.const(B_BN))
            y = R.nn.relu(d)
            R.output(y)
        return y


def test_before_expected_through_bias_add():
    result = check_rewrite(make_pass("fold-batchnorm"), ConvBiasBNConst, ConvBiasBNFolded)
    assert result.stats["folded_into_conv"] == 1


@I.ir_module
class ConvAffine:
    """A batch-norm already decomposed: per-channel multiply and add after conv + bias."""

    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1, 1, 1])
            d = R.add(c, R.const(B.reshape(1, 4, 1, 1)))
            e = R.multiply(d, R.const(SCALE))
            f = R.add(e, R.const(SHIFT))
            y = R.nn.relu(f)
            R.output(y)
        return y


@I.ir_module
class ConvAffineFolded:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_AFF), padding=[1, 1, 1, 1], out_dtype="float32")
            f = R.add(c, R.const(B_AFF.reshape(1, 4, 1, 1)))
            y = R.nn.relu(f)
            R.output(y)
        return y


def test_decomposed_batchnorm_folds_into_conv():
    result = check_rewrite(make_pass("fold-batchnorm"), ConvAffine, ConvAffineFolded)
    assert result.stats["affine_folded"] == 1 and result.stats["folded_into_conv"] == 0


def test_decomposed_batchnorm_numerics():
    check_numerics(make_pass("fold-batchnorm"), ConvAffine, rtol=1e-5)


@I.ir_module
class MatmulScale:
    """A scale alone (no shift) after matmul + bias-first add, as Linear exports it."""

    @R.function
    def main(x: R.Tensor((2, 5, 3), "float32")):
        with R.dataflow():
            h = R.matmul(x, R.const(W[0, :, 0, :].copy()))
            b = R.add(R.const(B[:3].copy()), h)
            y = R.multiply(b, R.const(SCALE.reshape(-1)[:3].copy()))
            R.output(y)
        return y


def test_decomposed_scale_folds_into_matmul():
    result = check_numerics(make_pass("fold-batchnorm"), MatmulScale, rtol=1e-5)
    assert result.stats["affine_folded"] == 1
    assert _ops(result.module) == {"relax.matmul": 1, "relax.add": 1}


@I.ir_module
class SpatialScale:
    """A scale that varies along the width is not a per-channel affine: no fold."""

    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1, 1, 1])
            y = R.multiply(c, R.const(np.linspace(0.5, 1.5, 8, dtype="float32")))
            R.output(y)
        return y


@I.ir_module
class SharedConv:
    """The conv result is also an output: folding would compute the conv twice."""

    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1, 1, 1])
            e = R.multiply(c, R.const(SCALE))
            y = (c, e)
            R.output(y)
        return y


def test_decomposed_form_does_not_fire_on_lookalikes():
    for mod in (SpatialScale, SharedConv):
        assert check_no_change(make_pass("fold-batchnorm"), mod).stats["affine_folded"] == 0
