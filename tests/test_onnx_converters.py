"""graphopt's own Relax converters (graphopt/frontend/converters/), against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_ref import check_against_ort, one_node_model

RNG = np.random.default_rng(1)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def run(tmp_path, op, inputs, outputs=("y",), opset=18, rtol=1e-5, atol=1e-5, **attrs):
    node = helper.make_node(op, list(inputs), list(outputs), **attrs)
    model = one_node_model(node, inputs, list(outputs), opset)
    return check_against_ort(model, inputs, tmp_path, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- reductions, run-time axes


@pytest.mark.parametrize(
    "op",
    ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceProd", "ReduceL2", "ReduceLogSumExp"],
)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_runtime_axes(tmp_path, op, keepdims):
    inputs = {"x": rand(2, 3, 4), "axes": np.array([-1, 0], np.int64)}
    run(tmp_path, op, inputs, keepdims=keepdims)


def test_reduce_runtime_axes_bool_and_single_axis(tmp_path):
    run(
        tmp_path,
        "ReduceMin",
        {"x": RNG.random((3, 4)) > 0.5, "axes": np.array([1], np.int64)},
        opset=20,  # bool inputs since opset 20
        keepdims=0,
    )
    run(tmp_path, "ReduceL1", {"x": rand(3, 1, 2), "axes": np.array([1], np.int64)})
