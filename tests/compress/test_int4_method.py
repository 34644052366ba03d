"""`compile --quantize int4`: the Int4 method through the CLI, RTN and GPTQ."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main

K1, H, K_OUT = 96, 70, 16  # matmul_1 has K = 70: two groups of 32 and a tail of 6


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x[4, 96] -> MatMul -> Relu -> MatMul -> y[4, 16]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((K1, H)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((H, K_OUT)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, K1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, K_OUT])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inputs(n: int, seed: int) -> np.ndarray:
    """Correlated features of very different scales: what GPTQ can exploit."""
    rng = np.random.default_rng(seed)
    mix = np.eye(K1) + rng.standard_normal((K1, K1)) * 0.3
    scale = np.exp(np.random.default_rng(99).standard_normal(K1))
    return (rng.standard_normal((n, K1)) @ mix * scale).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("int4")
    onnx.save(_mlp(), root / "mlp.onnx")
    np.savez(root / "calib.npz", x=_inputs(64, 1))
    return root


def _compile(files, name: str, *flags: str):
    out = files / name
    assert (
        main(["compile", str(files / "mlp.onnx"), "-o", str(out), "--quantize", "int4", *flags])
        == 0
    )
    return graphopt.load(out), json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_compile_int4_close_to_fp32(files, method, capsys):
    art, manifest = _compile(
        files, method, "--int4-method", method, "--calibration", str(files / "calib.npz")
    )
    m = manifest["int4"]
    assert m["settings"]["method"] == method and m["int4_layers"] == 2
    assert [r["bits"] for r in m["layers"]] == [4, 4]
    assert m["size"]["packed"] == (K1 * H + H * K_OUT) // 2
    assert m["size"]["ratio"] < 0.2
    assert "int4 (" in capsys.readouterr().out  # the report table
    onnx_model = _mlp()
    w1, w2 = (numpy_helper.to_array(t) for t in onnx_model.graph.initializer)
    x = _inputs(4, 7)
    want = np.maximum(x @ w1, 0) @ w2
    got = art.run({"x": x})["y"]
    cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.98


def test_gptq_lowers_each_layers_output_error(files):
    _art, manifest = _compile(files, "gptq2", "--calibration", str(files / "calib.npz"))
    rows = manifest["int4"]["layers"]
    assert manifest["int4"]["settings"]["method"] == "gptq"  # the default with calibration
    assert all(r["mse"] < r["rtn_mse"] for r in rows), rows


def test_asymmetric_stores_zero_points(files):
    _art, manifest = _compile(
        files, "asym", "--int4-method", "rtn", "--no-int4-symmetric", "--group-size", "64"
    )
    size = manifest["int4"]["size"]
    assert size["zeros"] == H * 2 + K_OUT * 2  # ceil(96/64) groups x 70, ceil(70/64) x 16


def test_gptq_without_calibration_is_an_error(files, capsys):
    args = ["compile", str(files / "mlp.onnx"), "-o", str(files / "bad"), "--quantize", "int4"]
    assert main([*args, "--int4-method", "gptq"]) == 2
    assert "needs --calibration" in capsys.readouterr().err


def test_report_shows_bits_and_sizes(files, capsys):
    _compile(files, "rep", "--int4-method", "rtn")
    capsys.readouterr()
    args = ["report", str(files / "rep"), "--vs", str(files / "mlp.onnx"), "--runs", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "matmul_1" in out and "packed" in out and "ratio" in out


def test_skip_keeps_a_layer_fp32(files):
    _art, manifest = _compile(files, "skip", "--int4-method", "rtn", "--int4-skip", "matmul_1")
    rows = {r["layer"]: r for r in manifest["int4"]["layers"]}
    assert rows["matmul_0"]["bits"] == 4 and rows["matmul_1"]["bits"] == 32
    assert manifest["int4"]["size"]["kept_fp32"] == H * K_OUT * 4
