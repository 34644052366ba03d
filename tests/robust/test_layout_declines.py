"""The `layout` pass declines what it does not convert (1-D convs, 5-D channel shuffles,
transposed convs): those keep their layout, are counted, and the model compiles and matches
onnxruntime. One small synthetic ONNX model per failure class of issue 16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from tvm import relax

import graphopt
from graphopt.pass_infra import make_pass
from graphopt.reference import ort_run, ort_session
from graphopt.testing import single_input_module

RNG = np.random.default_rng(0)


def _w(name, *shape):
    return nh.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def _i64(name, values):
    return nh.from_array(np.array(values, np.int64), name)


def _model(nodes, x_shape, y_shape, inits):
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
        [h.make_tensor_value_info("y", T.FLOAT, y_shape)],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def conv1d_after_conv2d():
    """Spectrogram front end: conv2d, then (B, C*F, T) and 1-D convs."""
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a"], ["b"]),
        h.make_node("Reshape", ["b", "s"], ["c"]),
        h.make_node("Conv", ["c", "w2"], ["d"], pads=[1, 1]),
        h.make_node("Relu", ["d"], ["e"]),
        h.make_node("Conv", ["e", "w3"], ["y"], pads=[1, 1]),
    ]
    inits = [_w("w1", 8, 3, 3, 3), _i64("s", [1, 8, 64]), _w("w2", 8, 8, 3), _w("w3", 4, 8, 3)]
    return _model(nodes, [1, 3, 8, 8], [1, 4, 64], inits)


def channel_shuffle():
    """ShuffleNet unit: two conv branches, concat, 5-D reshape / transpose / reshape."""
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Conv", ["x", "w3"], ["a2"], pads=[1, 1, 1, 1]),
        h.make_node("Concat", ["a", "a2"], ["b"], axis=1),
        h.make_node("Reshape", ["b", "s1"], ["c"]),
        h.make_node("Transpose", ["c"], ["d"], perm=[0, 2, 1, 3, 4]),
        h.make_node("Reshape", ["d", "s2"], ["e"]),
        h.make_node("Conv", ["e", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        _w("w1", 4, 3, 3, 3),
        _w("w3", 4, 3, 3, 3),
        _i64("s1", [1, 2, 4, 8, 8]),
        _i64("s2", [1, 8, 8, 8]),
        _w("w2", 4, 8, 3, 3),
    ]
    return _model(nodes, [1, 3, 8, 8], [1, 4, 8, 8], inits)


def shuffle_between_convs():
    """conv, relu, channel shuffle, conv: before, the layout pass got this silently wrong."""
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a"], ["b"]),
        h.make_node("Reshape", ["b", "s1"], ["c"]),
        h.make_node("Transpose", ["c"], ["d"], perm=[0, 2, 1, 3, 4]),
        h.make_node("Reshape", ["d", "s2"], ["e"]),
        h.make_node("Conv", ["e", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        _w("w1", 8, 3, 3, 3),
        _i64("s1", [1, 2, 4, 8, 8]),
        _i64("s2", [1, 8, 8, 8]),
        _w("w2", 4, 8, 3, 3),
    ]
    return _model(nodes, [1, 3, 8, 8], [1, 4, 8, 8], inits)


def transposed_conv():
    """Segmentation head: two convs, stride-2 ConvTranspose upsampling, conv."""
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["a0"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a0"], ["a1"]),
        h.make_node("Conv", ["a1", "w0"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["a"], ["b"]),
        h.make_node(
            "ConvTranspose",
            ["b", "w2"],
            ["c"],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 1],
        ),
        h.make_node("Relu", ["c"], ["d"]),
        h.make_node("Conv", ["d", "w3"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [_w("w1", 8, 3, 3, 3), _w("w0", 8, 8, 3, 3), _w("w2", 8, 6, 3, 3), _w("w3", 4, 6, 3, 3)]
    return _model(nodes, [1, 3, 8, 8], [1, 4, 16, 16], inits)


MODELS = {
    "conv1d": (conv1d_after_conv2d, 2),
    "channel-shuffle-5d": (channel_shuffle, 3),
    "shuffle-between-convs": (shuffle_between_convs, 0),  # no neighbours: nothing converted
    "conv-transpose": (transposed_conv, 1),
}


@pytest.mark.parametrize("case", list(MODELS))
@pytest.mark.parametrize("opt_level", [2, 3])
def test_declined_ops_compile_and_match_onnxruntime(tmp_path, case, opt_level):
    build, declined = MODELS[case]
    path = tmp_path / "m.onnx"
    onnx.save(build(), path)
    art = graphopt.compile(path, tmp_path / "art", opt_level=opt_level)
    x = RNG.standard_normal(art.inputs[0].shape).astype(np.float32)
    got = art.run({"x": x})["y"]
    want = ort_run(ort_session(str(path)), {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    stats = next(r["stats"] for r in art.manifest["report"]["passes"] if r["pass"] == "layout")
    assert stats["ops_declined"] == declined, stats
    assert (stats["convs_converted"] >= 1) == (declined > 0), stats
    assert stats["declined_whole"] == 0


def test_layout_failure_declines_the_whole_module(monkeypatch):
    """Whatever TVM's layout inference cannot handle leaves the module as it was."""

    def broken(*_args, **_kwargs):
        def fail(_mod):
            raise RuntimeError("Invalid SLayout: can't find S in source layout ABC")

        return fail

    w = relax.const(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))
    mod = single_input_module((1, 3, 8, 8), lambda bb, x: relax.op.nn.conv2d(x, w, padding=1))
    monkeypatch.setattr(relax.transform, "ConvertLayout", broken)
    result = make_pass("layout").run(mod)
    assert not result.modified and result.module is mod
    assert result.stats["declined_whole"] == 1
