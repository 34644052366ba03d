"""Check a one-node ONNX model imported by graphopt against onnxruntime on the same inputs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import graphopt


def one_node_model(
    node: onnx.NodeProto,
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    opset: int = 23,
    initializers: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """A model around `node`: `inputs` as graph inputs (or initializers), outputs untyped."""
    initializers = initializers or {}
    graph = helper.make_graph(
        [node],
        "one_node",
        [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)
            )
            for name, a in inputs.items()
        ],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in outputs],
        [onnx.numpy_helper.from_array(a, name) for name, a in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def check_against_ort(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path, rtol=1e-5, atol=1e-5
) -> list[np.ndarray]:
    """graphopt's -O2 x86 build matches onnxruntime: dtype, shape and values."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    # Declare each output's type as an exporter would: a shape that depends on run-time
    # operands (Resize scales, Reshape's shape) is not inferable from the graph alone.
    for value, array in zip(model.graph.output, want):
        value.CopyFrom(
            helper.make_tensor_value_info(
                value.name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)
            )
        )
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "artifact"
    graphopt.compile(
        model, out, target="x86", opt_level=2, input_shapes={k: v.shape for k, v in feeds.items()}
    )
    results = graphopt.load(out).run(feeds)
    got = [results[o.name] for o in model.graph.output]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = np.asarray(g)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


def rand(rng: np.random.Generator, *shape, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def check_op(tmp_path, op, inputs, outputs=("y",), opset=23, rtol=1e-5, atol=1e-5, **attrs):
    """One `op` node with `attrs` on `inputs` (graph inputs), checked against onnxruntime."""
    node = helper.make_node(op, list(inputs), list(outputs), **attrs)
    model = one_node_model(node, inputs, list(outputs), opset)
    return check_against_ort(model, inputs, tmp_path, rtol=rtol, atol=atol)
