"""Invalid attributes and absurd sizes are the model's fault: user errors (exit 2) before
import, not internal compiler errors or gigabytes allocated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def _model(nodes, x_shape, out_rank, inits=(), opset=17, outputs=True):
    y = h.make_tensor_value_info("y", T.FLOAT, ["a", "b", "c", "d"][:out_rank])
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, x_shape)], [y] if outputs else [], inits
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def conv(x_shape=(1, 3, 8, 8), **attrs):
    w = nh.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    return _model([h.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], x_shape, 4, [w])


def pool(x_shape=(1, 3, 8, 8), **attrs):
    return _model([h.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)], x_shape, 4)


def relu(shape, **kwargs):
    return _model([h.make_node("Relu", ["x"], ["y"])], shape, 2, **kwargs)


def huge(op):
    s = nh.from_array(np.array([1 << 16, 1 << 16], np.int64), "s")
    if op == "ConstantOfShape":
        nodes = [h.make_node(op, ["s"], ["c"], name="big"), h.make_node("Add", ["x", "c"], ["y"])]
    else:
        nodes = [h.make_node(op, ["x", "s"], ["y"], name="big")]
    return _model(nodes, [1, 1], 2, [s])


CASES = {
    "zero-size-spatial": (lambda: conv(x_shape=(1, 3, 0, 0)), "zero-size dim"),
    "negative-stride": (lambda: conv(strides=[-1, -1]), "strides"),
    "negative-pad": (lambda: conv(pads=[-1, -1, -1, -1]), "pads"),
    "dilation-0": (lambda: conv(dilations=[0, 0]), "dilations"),
    "conv-kernel-larger-than-input": (lambda: conv(x_shape=(1, 3, 2, 2)), "larger than"),
    "pool-kernel-0": (lambda: pool(kernel_shape=[0, 0]), "kernel_shape"),
    "pool-kernel-larger-than-input": (lambda: pool(kernel_shape=[9, 9]), "larger than"),
    "opset-99": (lambda: relu([1, 4], opset=99), "opset 99"),
    "no-outputs": (lambda: relu([1, 4], outputs=False), "no outputs"),
    "expand-2^32": (lambda: huge("Expand"), "Expand"),
    "tile-2^32": (lambda: huge("Tile"), "Tile"),
    "constant-of-shape-2^32": (lambda: huge("ConstantOfShape"), "ConstantOfShape"),
    "input-dim-2^40": (lambda: relu([1, 1 << 40]), "too large"),
    "zero-elements-dim-2^40": (lambda: relu([0, 1 << 40]), "too large"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_model_is_a_user_error(run_cli, tmp_path, case):
    build, words = CASES[case]
    path = tmp_path / "m.onnx"
    onnx.save(build(), path)
    run_cli("compile", path, "-o", tmp_path / "out", "-q").assert_user_error(words)
    assert not (tmp_path / "out").exists()


def test_valid_windows_still_compile(run_cli, tmp_path):
    """Kernel exactly as large as the padded input, stride 2: accepted."""
    path = tmp_path / "m.onnx"
    onnx.save(conv(x_shape=(1, 3, 2, 2), pads=[1, 1, 0, 0], strides=[2, 2]), path)
    result = run_cli("compile", path, "-o", tmp_path / "out", "-q", "-O0")
    assert result.rc == 0, result.err


def test_unexpected_exception_is_one_line_exit_3(run_cli, tmp_path, monkeypatch):
    """A bug outside any pass (TVM's build, say) is an internal error line, not a traceback."""
    from graphopt import compiler

    def broken(*_args, **_kwargs):
        raise RuntimeError("Check failed: Failed to vectorize loop with extent 0")

    monkeypatch.setattr(compiler, "compile_model", broken)
    path = tmp_path / "m.onnx"
    onnx.save(relu([1, 4]), path)
    result = run_cli("compile", path, "-o", tmp_path / "out")
    assert result.rc == 3 and "Traceback" not in result.err, result.err
    assert result.err.startswith("error: internal error: RuntimeError: Check failed"), result.err


def test_zero_size_input_is_a_constant(tmp_path):
    """An empty input has one possible value (frontend/empty_inputs.py): it compiles, stays in
    the signature, and the artifact returns the empty result."""
    import graphopt

    graphopt.compile(relu([0, 4]), tmp_path / "out", target="x86", opt_level=2)
    model = graphopt.load(tmp_path / "out")
    assert [i.shape for i in model.inputs] == [(0, 4)]
    assert model.run({"x": np.zeros((0, 4), np.float32)})["y"].shape == (0, 4)
