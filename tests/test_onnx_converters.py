"""graphopt's own Relax converters (graphopt/frontend/converters/), against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ref
import pytest
from onnx import helper
from onnx_ref import check_against_ort, one_node_model

import graphopt
from graphopt.frontend import import_onnx

RNG = np.random.default_rng(1)


def rand(*shape, dtype=np.float32):
    return onnx_ref.rand(RNG, *shape, dtype=dtype)


def run(tmp_path, op, inputs, outputs=("y",), opset=18, **kw):
    return onnx_ref.check_op(tmp_path, op, inputs, outputs, opset, **kw)


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


# ---------------------------------------------------------------- run-time shape operands


@pytest.mark.parametrize(
    "mode, coord",
    [("nearest", "asymmetric"), ("linear", "half_pixel"), ("cubic", "align_corners")],
)
def test_resize_runtime_scales(tmp_path, mode, coord):
    inputs = {"x": rand(1, 2, 3, 4), "scales": np.array([1, 1, 2, 1.5], np.float32)}
    node = helper.make_node(
        "Resize", ["x", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=coord
    )
    model = one_node_model(node, inputs, ["y"], 19)
    check_against_ort(model, inputs, tmp_path, rtol=1e-4, atol=1e-5)


def test_resize_runtime_sizes(tmp_path):
    inputs = {"x": rand(1, 2, 4, 4), "sizes": np.array([1, 2, 2, 6], np.int64)}
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")
    check_against_ort(one_node_model(node, inputs, ["y"], 19), inputs, tmp_path, rtol=1e-4)


@pytest.mark.parametrize("shape", [[0, -1], [2, 0, -1], [-1]])
def test_reshape_runtime_shape(tmp_path, shape):
    run(tmp_path, "Reshape", {"x": rand(4, 3, 2), "shape": np.array(shape, np.int64)})


def test_split_runtime_sizes(tmp_path):
    inputs = {"x": rand(2, 7), "split": np.array([2, 4, 1], np.int64)}
    run(tmp_path, "Split", inputs, ["a", "b", "c"], axis=1)


@pytest.mark.parametrize("attrs", [{}, {"exclusive": 1, "reverse": 1}])
def test_cumsum_runtime_axis(tmp_path, attrs):
    run(tmp_path, "CumSum", {"x": rand(2, 3, 4), "axis": np.array(-2, np.int64)}, **attrs)


@pytest.mark.parametrize("largest", [0, 1])
def test_topk_runtime_k(tmp_path, largest):
    x = np.array([[3, 1, 3, 2, 1], [0, 5, 5, 5, 4]], np.float32)  # ties: lower index first
    run(tmp_path, "TopK", {"x": x, "k": np.array([3], np.int64)}, ["v", "i"], largest=largest)


@pytest.mark.parametrize("axis", [-1, 0])
def test_one_hot_runtime_depth(tmp_path, axis):
    inputs = {
        "i": np.array([[1, -1, 9], [0, 2, 3]], np.int64),  # -1 wraps, 9 is out of range
        "depth": np.array(4, np.float32),
        "values": np.array([-2, 5], np.float32),
    }
    run(tmp_path, "OneHot", inputs, axis=axis, opset=11)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "wrap"])
def test_pad_runtime_pads(tmp_path, mode):
    inputs = {"x": rand(3, 4), "pads": np.array([1, 2, 2, -1], np.int64)}
    if mode == "constant":
        inputs["value"] = np.array(1.5, np.float32)
    run(tmp_path, "Pad", inputs, mode=mode)


# ---------------------------------------------------------------- recurrent layers


def _rnn_inputs(op, num_dir=1, batch=2, steps=3, size=4, hidden=5, layout=0):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    x_shape = (batch, steps, size) if layout else (steps, batch, size)
    h_shape = (batch, num_dir, hidden) if layout else (num_dir, batch, hidden)
    return {
        "x": rand(*x_shape),
        "w": rand(num_dir, gates * hidden, size) * 0.5,
        "r": rand(num_dir, gates * hidden, hidden) * 0.5,
        "b": rand(num_dir, 2 * gates * hidden) * 0.5,
        "lens": np.array([3, 2][:batch], np.int32),
        "h0": rand(*h_shape),
        "c0": rand(*h_shape),
        "p": rand(num_dir, 3 * hidden) * 0.5,
    }, hidden


@pytest.mark.parametrize(
    "op, outputs, num_dir, attrs",
    [
        ("LSTM", ["y", "y_h", "y_c"], 2, {"direction": "bidirectional"}),
        ("LSTM", ["y", "y_h", "y_c"], 1, {"clip": 0.5}),
        ("GRU", ["y", "y_h"], 1, {"linear_before_reset": 1}),
        ("GRU", ["y", "y_h"], 1, {"direction": "reverse"}),
        ("RNN", ["y", "y_h"], 1, {"activations": ["Relu"]}),
    ],
    ids=[
        "lstm-bidirectional",
        "lstm-peepholes-clip",
        "gru-linear-before-reset",
        "gru-reverse",
        "rnn-relu",
    ],
)
def test_recurrent(tmp_path, op, outputs, num_dir, attrs):
    inputs, hidden = _rnn_inputs(op, num_dir, layout=attrs.get("layout", 0))
    names = ["x", "w", "r", "b", "", "h0"] + (["c0", "p"] if op == "LSTM" else [])
    feeds = {k: inputs[k] for k in names if k}
    node = helper.make_node(op, names, outputs, hidden_size=hidden, **attrs)
    check_against_ort(
        one_node_model(node, feeds, outputs, 14), feeds, tmp_path, rtol=1e-4, atol=1e-5
    )


def test_recurrent_sequence_lens(tmp_path):
    inputs, hidden = _rnn_inputs("GRU")
    feeds = {k: inputs[k] for k in ["x", "w", "r", "b", "lens"]}
    node = helper.make_node("GRU", list(feeds), ["y", "y_h"], hidden_size=hidden)
    check_against_ort(
        one_node_model(node, feeds, ["y", "y_h"], 14), feeds, tmp_path, rtol=1e-4, atol=1e-5
    )


def test_pad_runtime_axes(tmp_path):
    inputs = {
        "x": rand(2, 3, 4),
        "pads": np.array([1, 0, 2, 1], np.int64),
        "value": np.array(-1, np.float32),
        "axes": np.array([-1, 0], np.int64),
    }
    run(tmp_path, "Pad", inputs)


# ---------------------------------------------------------------- element-wise


@pytest.mark.parametrize(
    "x, y",
    [
        (rand(3, 4), np.array([2, 3, 1, 0], np.int64)),
        (np.array([2, -3, 4], np.int32), np.array([3, 3, 2], np.int32)),
    ],
)
def test_pow_mixed_types(tmp_path, x, y):
    run(tmp_path, "Pow", {"x": x, "e": y}, opset=15)


def test_isinf_one_sign(tmp_path):
    x = np.array([-np.inf, np.inf, 1.0, np.nan], np.float32)
    run(tmp_path, "IsInf", {"x": x}, detect_negative=0)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization(tmp_path, p):
    run(tmp_path, "LpNormalization", {"x": rand(3, 4)}, axis=0, p=p)


@pytest.mark.parametrize("to, x", [(6, rand(2, 3)), (1, np.array([1, -7, 1 << 30], np.int32))])
def test_bitcast(tmp_path, to, x):
    """Opset-26 BitCast; onnxruntime may not have it yet, so numpy's view is the reference."""
    node = helper.make_node("BitCast", ["x"], ["y"], to=to)
    model = one_node_model(node, {"x": x}, ["y"], 26)
    want = x.view(np.int32 if to == 6 else np.float32)
    out = tmp_path / "a"
    graphopt.compile(model, out, target="x86", opt_level=2, input_shapes={"x": x.shape})
    got = graphopt.load(out).run({"x": x})["y"]
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("time_axis", [0, 1])
def test_reverse_sequence(tmp_path, time_axis):
    inputs = {
        "x": rand(4, 3),
        "lens": np.array([1, 4, 3] if time_axis == 0 else [2, 1, 4, 3], np.int64),
    }
    if time_axis == 1:
        inputs["x"] = rand(4, 5)
        inputs["lens"] = np.array([2, 1, 5, 3], np.int64)
    run(
        tmp_path, "ReverseSequence", inputs, opset=10, time_axis=time_axis, batch_axis=1 - time_axis
    )


def test_resize_runtime_scales_for_some_axes(tmp_path):
    inputs = {"x": rand(1, 2, 3, 4), "scales": np.array([2, 3], np.float32)}
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], axes=[3, 2], mode="nearest")
    check_against_ort(one_node_model(node, inputs, ["y"], 19), inputs, tmp_path)


def test_resize_runtime_sizes_keep_aspect_ratio(tmp_path):
    inputs = {"x": rand(1, 1, 4, 4), "sizes": np.array([2, 3], np.int64)}
    node = helper.make_node(
        "Resize",
        ["x", "", "", "sizes"],
        ["y"],
        axes=[2, 3],
        mode="linear",
        keep_aspect_ratio_policy="not_smaller",
    )
    check_against_ort(one_node_model(node, inputs, ["y"], 19), inputs, tmp_path, rtol=1e-4)


def test_elu_float16_and_eye_like_dtype(tmp_path):
    run(tmp_path, "Elu", {"x": rand(2, 5, dtype=np.float16)}, alpha=0.5, rtol=1e-3, atol=1e-3)
    x = np.zeros((3, 4), np.int32)
    run(tmp_path, "EyeLike", {"x": x}, opset=9, dtype=1, k=1)


# ---------------------------------------------------------------- detection


def _nms_inputs() -> dict[str, np.ndarray]:
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 2, 1, 3]]], np.float32)
    return {
        "boxes": boxes,
        "scores": np.array([[[0.9, 0.8, 0.7]]], np.float32),
        "max_boxes": np.array([2], np.int64),
        "iou": np.array([0.5], np.float32),
    }


def test_nms_with_runtime_limits_is_refused():
    """TVM's converter would run it with 0 boxes and IoU 0.5: refuse instead."""
    inputs = _nms_inputs()
    node = helper.make_node("NonMaxSuppression", list(inputs), ["y"])
    model = one_node_model(node, inputs, ["y"], 18)
    with pytest.raises(graphopt.GraphoptError, match="NonMaxSuppression with a run-time"):
        import_onnx(model)


def test_nms_with_constant_limits(tmp_path):
    inputs = _nms_inputs()
    limits = {k: inputs.pop(k) for k in ("max_boxes", "iou")}
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_boxes", "iou"], ["y"])
    model = one_node_model(node, inputs, ["y"], 18, initializers=limits)
    check_against_ort(model, inputs, tmp_path)


# ---------------------------------------------------------------- zero-size inputs


@pytest.mark.parametrize("noop", [0, 1])
def test_empty_axes_input_reduces_all_or_nothing(tmp_path, noop):
    """An empty `axes` graph input is a constant (frontend/empty_inputs.py): every axis, or
    none with noop_with_empty_axes; the input stays in the signature."""
    inputs = {"x": rand(2, 3, 4), "axes": np.zeros(0, np.int64)}
    run(tmp_path, "ReduceSum", inputs, keepdims=1, noop_with_empty_axes=noop)


def test_zero_size_data_input_folds_to_its_result(tmp_path):
    inputs = {"x": np.zeros((2, 0, 4), np.float32), "axes": np.array([1], np.int64)}
    run(tmp_path, "ReduceSum", inputs, keepdims=1)


# ---------------------------------------------------------------- DFT (spectral.py)


@pytest.mark.parametrize(
    "attrs, channels",
    [({}, 1), ({"onesided": 1}, 1), ({"inverse": 1}, 2), ({"axis": 2}, 2)],
)
def test_dft_opset17(tmp_path, attrs, channels):
    run(tmp_path, "DFT", {"x": rand(2, 8, 6, channels)}, opset=17, atol=1e-4, **attrs)


def test_dft_runtime_axis(tmp_path):
    """opset 20: a run-time axis picks among the candidates, computed for every signal axis."""
    node = helper.make_node("DFT", ["x", "", "axis"], ["y"])
    inputs = {"x": rand(4, 4, 4, 2), "axis": np.array(1, np.int64)}
    check_against_ort(one_node_model(node, inputs, ["y"], 20), inputs, tmp_path, atol=1e-4)


@pytest.mark.parametrize("length", [6, 11])
def test_dft_constant_length_truncates_or_pads(tmp_path, length):
    node = helper.make_node("DFT", ["x", "n"], ["y"], axis=1)
    inputs = {"x": rand(2, 8, 3, 1)}
    model = one_node_model(node, inputs, ["y"], 17, {"n": np.array(length, np.int64)})
    check_against_ort(model, inputs, tmp_path, atol=1e-4)
