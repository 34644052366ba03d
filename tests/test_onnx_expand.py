"""Function operators imported through their ONNX function body, against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ref
import pytest
from onnx import helper
from onnx_ref import one_node_model

from graphopt.frontend.expand import expand_functions
from graphopt.frontend.support import converted_op_types, supported_op_types

RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32):
    return onnx_ref.rand(RNG, *shape, dtype=dtype)


def run(tmp_path, op, inputs, outputs=("y",), opset=23, **kw):
    return onnx_ref.check_op(tmp_path, op, inputs, outputs, opset, **kw)


@pytest.mark.parametrize(
    "attrs, kv_heads, mask",
    [({}, 4, False), ({"is_causal": 1}, 4, False), ({"scale": 0.3}, 2, True)],
    ids=["plain", "causal", "gqa-scale-mask"],
)
def test_attention(tmp_path, attrs, kv_heads, mask):
    """Opset-23 Attention (TVM's table only knows com.microsoft's operator of that name)."""
    inputs = {"q": rand(2, 4, 5, 8), "k": rand(2, kv_heads, 6, 8), "v": rand(2, kv_heads, 6, 8)}
    if mask:
        inputs["mask"] = RNG.random((5, 6)) > 0.3
    run(tmp_path, "Attention", inputs, ["y"], rtol=1e-4, atol=1e-5, **attrs)


def test_layer_norm_statistics(tmp_path):
    """Mean and InvStdDev outputs too (TVM's converter returns Y only)."""
    inputs = {"x": rand(2, 3, 4), "scale": rand(3, 4), "bias": rand(3, 4)}
    run(tmp_path, "LayerNormalization", inputs, ["y", "mean", "inv_std"], axis=1, epsilon=1e-3)


def test_rms_norm_over_every_axis(tmp_path):
    run(tmp_path, "RMSNormalization", {"x": rand(3, 4), "scale": rand(3, 4)}, axis=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nll_loss(tmp_path, reduction):
    inputs = {
        "x": rand(3, 5, 2),
        "t": np.array([[0, 4], [1, 1], [2, 3]], np.int64),
        "w": rand(5) ** 2,
    }
    run(tmp_path, "NegativeLogLikelihoodLoss", inputs, reduction=reduction, ignore_index=1)


def test_softmax_cross_entropy_expands_twice(tmp_path):
    """Its body uses NegativeLogLikelihoodLoss, itself a function operator."""
    inputs = {"x": rand(3, 5), "t": np.array([0, 4, 2], np.int64)}
    run(tmp_path, "SoftmaxCrossEntropyLoss", inputs, ["y", "log_prob"], reduction="mean")


def test_celu_and_swish(tmp_path):
    run(tmp_path, "Celu", {"x": rand(2, 7)}, alpha=2.0)
    run(tmp_path, "Swish", {"x": rand(2, 7)}, opset=24, alpha=0.5)


def test_rotary_embedding_interleaved(tmp_path):
    inputs = {
        "x": rand(1, 2, 3, 8),
        "cos": rand(4, 4),
        "sin": rand(4, 4),
        "pos": np.array([[0, 3, 1]], np.int64),
    }
    run(tmp_path, "RotaryEmbedding", inputs, interleaved=1)


def test_supported_nodes_are_left_alone():
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"])
    inputs = {"x": rand(2, 3), "s": rand(3)}
    model = one_node_model(node, inputs, ["y"])
    assert expand_functions(model, converted_op_types()).graph.node[0].op_type == (
        "LayerNormalization"
    )


def test_expanded_ops_are_listed_as_supported():
    assert {"Celu", "NegativeLogLikelihoodLoss", "RotaryEmbedding"} <= supported_op_types()
    assert "LinearAttention" not in supported_op_types()  # its body is a Scan


def test_castlike_with_an_empty_like_tensor(tmp_path):
    """`like` only gives the type: after expansion no node reads it, so its size is no issue."""
    inputs = {"x": rand(3, 4), "like": np.zeros((0,), np.float16)}
    run(tmp_path, "CastLike", inputs, opset=21)
