"""`--quantize int4` stores the convs int4 does not take (depthwise, stem) with int8 weights,
one scale per output channel (`graphopt.w8_conv_ops`, `lower-int4{int8_windows=true}`)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import numpy_helper
from tvm import relax

import graphopt
from graphopt import _tvm
from graphopt.cli import main
from graphopt.compress.int4.layers import window_convs
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.sizes import library_weights
from graphopt.testing import run_module
from tests.model_builders import GraphBuilder, _value_info


def _cnn() -> onnx.ModelProto:
    """Stem 3x3 stride 2 (3 -> 32), depthwise 3x3, 1x1 32 -> 32, ReLUs between."""
    g = GraphBuilder(3)
    h = g.op("Relu", [g.conv("x", 3, 32, 3, stride=2, pad=1)])
    h = g.op("Relu", [g.conv(h, 32, 32, 3, group=32, pad=1)])
    y = g.conv(h, 32, 32, 1)
    return g.model([_value_info("x", [1, 3, 16, 16])], [("y", y, [1, 32, 8, 8])], "cnn")


def _int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy: symmetric per-output-channel int8, round half to even."""
    s = np.abs(w).reshape(len(w), -1).max(1) / 127
    q = np.clip(np.round(w / s[:, None, None, None]), -127, 127)
    return q.astype(np.int8), s.astype(np.float32)


def _mod():
    return run_passes(import_onnx(_cnn()).mod, instantiate(parse_pipeline("fold-constants")))


def test_window_convs_are_the_convs_int4_does_not_take():
    assert [ly.name for ly in window_convs(_mod()["main"])] == ["conv2d_0", "conv2d_1"]
    assert [ly.name for ly in window_convs(_mod()["main"], ("conv2d_1",))] == ["conv2d_0"]


def test_int8_window_weights_are_stored_exactly_and_computed_with():
    mod = _mod()
    low = run_passes(mod, [make_pass("lower-int4", {"int8_windows": "true", "skip": "conv2d_2"})])
    model = _cnn()
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n.input[1] for n in model.graph.node if n.op_type == "Conv"][:2]
    stored = _constants(low)
    for name in convs:  # the int8 values and scales of numpy's rounding are in the graph
        q, s = _int8(weights[name])
        assert any(a.dtype == np.int8 and np.array_equal(a, q) for a in stored)
        assert any(a.dtype == np.float32 and np.array_equal(a, s) for a in stored)
        weights[name] = q.astype(np.float32) * s[:, None, None, None]
    for init in model.graph.initializer:  # onnxruntime on the int8 weights' values
        init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(run_module(low, [x])[0], want, rtol=1e-5, atol=1e-5)
    fp32 = run_module(mod, [x])[0]
    assert 1e-4 < np.abs(fp32 - want).max() < 0.05 * np.abs(fp32).max()  # int8 moved it


def _constants(mod) -> list[np.ndarray]:
    found = []

    def visit(e):
        if isinstance(e, tvm.ir.GenericConst):
            found.append(_tvm.constant_value(e))

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    onnx.save(_cnn(), root / "cnn.onnx")
    return root


def _compile(files, windows: str):
    out = files / windows
    args = ["compile", str(files / "cnn.onnx"), "-o", str(out), "--quantize", "int4"]
    assert main([*args, "--int4-method", "rtn", "--int4-windows", windows]) == 0
    m = json.loads((out / "manifest.json").read_text())["int4"]
    return graphopt.load(out), m, library_weights(out / "model.so").weight_bytes


def test_int8_windows_shrink_the_library(files):
    art8, m8, bytes8 = _compile(files, "int8")
    art32, m32, bytes32 = _compile(files, "fp32")
    window_fp32 = (32 * 3 * 9 + 32 * 9) * 4
    assert m8["size"]["int8_windows"] == window_fp32 // 4 + 2 * 32 * 4  # + a scale a channel
    assert "int8_windows" not in m32["size"]
    assert bytes32 - bytes8 >= window_fp32 * 3 // 4 - 2 * 32 * 4  # int8 in the library
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(files / "cnn.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    got8, got32 = art8.run({"x": x})["y"], art32.run({"x": x})["y"]
    assert np.abs(got8 - want).max() < 0.2 * np.abs(want).max()
    assert not np.array_equal(got8, got32)
