"""16-bit window convs (`graphopt.precision_window`): the window gather against numpy bit for
bit, and `--precision` on x86 lowering a 3x3 stem conv (and a strided 1x1) to the 16-bit
matmul over its windows, equal to the numpy model of that arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import _tvm
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.precision_window import (
    PAD_BITS,
    Window,
    reference_window,
    window_bits_kernel,
    window_patches,
)
from graphopt.reference import ort_run, ort_session

WINDOWS = {
    "stem_3x3_stride2": Window((1, 15, 16, 3), (3, 3), (2, 2), (1, 1, 1, 1)),
    "5x5_asymmetric_pads": Window((2, 9, 7, 5), (5, 5), (1, 1), (2, 1, 0, 2)),
    "3x3_dilation2": Window((1, 11, 11, 4), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    "1x1_stride2": Window((1, 8, 8, 6), (1, 1), (2, 2), (0, 0, 0, 0)),
}


def _one_conv(w: np.ndarray, x_shape: list[int], **attrs) -> onnx.ModelProto:
    """A model of one Conv (no bias) with weight `w` and the given attributes."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("name", list(WINDOWS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_window_gather_equals_numpy(name, precision):
    win = WINDOWS[name]
    x = (np.random.default_rng(0).standard_normal(win.x_shape) * 3).astype(np.float32)
    x.flat[::7] = np.float32(1 + 2**-9)  # a tie of bf16's rounding: rounds to even
    func = window_bits_kernel(win, precision).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), "llvm")
    out = tvm.runtime.tensor(np.zeros(win.patches_shape, np.uint16))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(PAD_BITS), out)
    np.testing.assert_array_equal(out.numpy(), window_patches(x, win, precision))


def test_window_geometry_matches_onnxruntime_conv(tmp_path):
    """The numpy model itself: with weights and inputs exact in bf16, the windows and weight
    order give onnxruntime's conv (sums of small integers are exact)."""
    win = WINDOWS["5x5_asymmetric_pads"]
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, win.x_shape).astype(np.float32)
    w = rng.integers(-3, 4, (7, win.x_shape[3], *win.kernel)).astype(np.float32)
    model = _one_conv(w, [2, 5, 9, 7], pads=list(win.pads), kernel_shape=[5, 5])
    onnx.save(model, tmp_path / "c.onnx")
    want = ort_run(ort_session(tmp_path / "c.onnx"), {"x": x.transpose(0, 3, 1, 2).copy()})["y"]
    got = reference_window(x, w, win, "bf16").transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, want)


def _stem(size: int = 20) -> onnx.ModelProto:
    """x [1, 3, size, size] -> 3x3 stride-2 conv (3 -> 16) + bias + ReLU6 -> 1x1 stride-2
    conv (16 -> 8) -> y: a CNN's stem and a ResNet's strided shortcut in small."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32), "w0"),
        numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b0"),
        numpy_helper.from_array((rng.standard_normal((8, 16, 1, 1)) / 4).astype(np.float32), "w1"),
        numpy_helper.from_array(np.float32(0), "lo"),
        numpy_helper.from_array(np.float32(6), "hi"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "w0", "b0"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Clip", ["a", "lo", "hi"], ["ar"]),
        helper.make_node("Conv", ["ar", "w1"], ["y"], kernel_shape=[1, 1], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, None, None])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _numpy_stem(model: onnx.ModelProto, x: np.ndarray, precision: str) -> np.ndarray:
    """The 16-bit arithmetic of both convs in numpy (NCHW in and out)."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nhwc = x.transpose(0, 2, 3, 1)
    win0 = Window(nhwc.shape, (3, 3), (2, 2), (1, 1, 1, 1))
    a = np.clip(reference_window(nhwc, w["w0"], win0, precision) + w["b0"], 0, 6)
    win1 = Window(a.shape, (1, 1), (2, 2), (0, 0, 0, 0))
    return reference_window(a, w["w1"], win1, precision).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mcpu", ["znver3", "host"])
def test_stem_conv_16bit_on_x86_equals_numpy(tmp_path, precision, mcpu):
    """Both convs 16-bit (the gather, then the fp32-FMA or vdpbf16ps matmul with bias and
    ReLU6 folded), bit for bit against numpy, and within bf16 of onnxruntime fp32."""
    model = _stem()
    options = {"mcpu": "znver3"} if mcpu == "znver3" else {}
    art = graphopt.compile(
        model,
        tmp_path / "stem",
        target_options=options,
        compression=[Precision(PrecisionOptions(precision, edges=True))],
    )
    rows = art.manifest["precision"]["layers"]
    assert [r["precision"] for r in rows] == [precision] * 2
    stats = {r["pass"]: r["stats"] for r in art.manifest["report"]["passes"]}
    assert stats["lower-precision"]["window_convs"] == 2
    assert stats["fuse-precision-epilogue"]["bias"] >= 1
    x = np.random.default_rng(6).standard_normal((1, 3, 20, 20)).astype(np.float32)
    got = art.run({"x": x})["y"]
    np.testing.assert_array_equal(got, _numpy_stem(model, x, precision))
    onnx.save(model, tmp_path / "stem.onnx")
    ref = ort_run(ort_session(tmp_path / "stem.onnx"), {"x": x})["y"]
    assert np.abs(got - ref).max() < 0.03 * np.abs(ref).max()


@pytest.mark.parametrize("windows", [False, True])
def test_lowering_takes_window_convs_only_when_asked(windows):
    mod = make_pass("fold-constants").run(import_onnx(_stem()).mod).module
    opts = {"precision": "bf16", "windows": str(windows).lower()}
    result = make_pass("lower-precision", opts).run(mod)
    assert result.stats["window_convs"] == (2 if windows else 0)
    assert _tvm.op_counts(result.module).get("relax.nn.conv2d", 0) == (0 if windows else 2)


def test_grouped_conv_stays_fp32_and_says_why(tmp_path):
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((8, 2, 3, 3)) / 4).astype(np.float32)
    model = _one_conv(w, [1, 8, 10, 10], group=4, kernel_shape=[3, 3])
    art = graphopt.compile(
        model, tmp_path / "g", compression=[Precision(PrecisionOptions("bf16", edges=True))]
    )
    (row,) = art.manifest["precision"]["layers"]
    assert row["precision"] == "fp32"
    assert row["reason"] == "no 16-bit kernel (grouped conv)"
