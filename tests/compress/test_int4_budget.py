"""`--quantize int4 --max-drop`: the switchable graph, the ladder and the artifact budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.compress.common.layers import find_layers
from graphopt.compress.int4.budget import SwitchRunner, ladder_bits, switch_module
from graphopt.compress.int4.embedding import embedding_table
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.compress.int8.qdq import dequant_weight_np, weight_qparams
from graphopt.frontend import import_onnx
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import host_target
from tests import model_builders as mb

D = 64


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x[8, 64] -> 3 x (MatMul -> Relu) -> y[8, 64]. With random weights int4 everywhere
    costs about 9 points of min cosine, int8 everywhere about 0.5."""
    rng = np.random.default_rng(seed)
    ws = [(rng.standard_normal((D, D)) / 8).astype(np.float32) for _ in range(3)]
    nodes, prev = [], "x"
    for i in range(3):
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        out = "y" if i == 2 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"h{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, D])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    for w in (numpy_helper.to_array(t) for t in model.graph.initializer):
        x = np.maximum(x @ w, 0)
    return x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("int4budget")
    onnx.save(_mlp(), root / "mlp.onnx")
    rng = np.random.default_rng(1)
    np.savez(root / "calib.npz", x=rng.standard_normal((64, D)).astype(np.float32))
    np.savez(root / "eval.npz", x=rng.standard_normal((64, D)).astype(np.float32))
    return root


def test_ladder_moves_the_most_sensitive_first():
    order = ["b", "a", "c"]
    assert ladder_bits(order, 0, "int8") == {"b": 4, "a": 4, "c": 4}
    assert ladder_bits(order, 2, "int8") == {"b": 8, "a": 8, "c": 4}
    assert ladder_bits(order, 4, "int8") == {"b": 32, "a": 8, "c": 8}
    assert ladder_bits(order, 6, "int8") == {"b": 32, "a": 32, "c": 32}
    assert ladder_bits(order, 1, "fp32") == {"b": 32, "a": 4, "c": 4}


def test_switch_graph_computes_each_precision():
    model = _mlp()
    mod = import_onnx(model).mod
    mod = run_passes(mod, instantiate(parse_pipeline("fold-constants")))
    layers = find_layers(mod["main"])
    int4 = {ly.name: quantize_rtn(ly.weight, 32, True) for ly in layers}
    dq4 = {name: q.dequantize() for name, q in int4.items()}
    runner = SwitchRunner(switch_module(mod, layers, int4, "int8"), layers, "int8", host_target())
    x = np.random.default_rng(3).standard_normal((8, D)).astype(np.float32)
    ws = [numpy_helper.to_array(t) for t in model.graph.initializer]
    fp32 = runner.run(None, {"x": x})
    np.testing.assert_allclose(fp32, _reference(model, x), rtol=1e-5, atol=1e-6)
    # matmul_1 int4: its weight is exactly the dequantized int4 weight
    h = np.maximum(x @ ws[0], 0)
    want = np.maximum(np.maximum(h @ dq4["matmul_1"], 0) @ ws[2], 0)
    np.testing.assert_allclose(runner.run({"matmul_1": 4}, {"x": x}), want, rtol=1e-4, atol=1e-6)
    # matmul_0 int8: per-row int8 activations and per-channel int8 weights
    s = np.abs(x).max(1, keepdims=True) / 127
    wq, ws8 = weight_qparams(ws[0], 1)
    h8 = np.maximum((np.round(x / s) * s) @ dequant_weight_np(wq, ws8, 1), 0)
    want = np.maximum(np.maximum(h8 @ ws[1], 0) @ ws[2], 0)
    np.testing.assert_allclose(runner.run({"matmul_0": 8}, {"x": x}), want, rtol=1e-4, atol=1e-5)


def _compile(files, name: str, *flags: str):
    out = files / name
    args = ["compile", str(files / "mlp.onnx"), "-o", str(out), "--quantize", "int4"]
    assert main([*args, "--int4-method", "rtn", *flags]) == 0
    return graphopt.load(out), json.loads((out / "manifest.json").read_text())["int4"]


def _cosine(got: np.ndarray, want: np.ndarray) -> float:
    num = np.sum(got * want, axis=1)
    return float((num / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min())


@pytest.mark.parametrize("fallback", ["int8", "fp32"])
def test_max_drop_keeps_the_most_sensitive_layers_off_int4(files, fallback, capsys):
    budget = ["--max-drop", "1", "--quant-metric", "cosine", "--eval", str(files / "eval.npz")]
    art, m = _compile(files, f"fb-{fallback}", *budget, "--int4-fallback", fallback)
    acc = m["accuracy"]
    assert acc["all_int4"] < acc["fp32"] - 1  # int4 everywhere misses the budget
    kept = [r["layer"] for r in m["layers"] if r["bits"] != 4]
    assert 0 < len(kept) < 3 and set(kept) == set(acc["order"][: len(kept)])  # most sensitive
    assert m["int4_layers"] == 3 - len(kept)
    assert {r["bits"] for r in m["layers"] if r["bits"] != 4} == {8 if fallback == "int8" else 32}
    assert acc["artifact"] >= acc["fp32"] - 1 - 1e-9  # what ships meets the budget
    assert ("lower-int8" in m["pipeline"]) == (fallback == "int8")
    x = np.load(files / "eval.npz")["x"][:8]
    assert _cosine(art.run({"x": x})["y"], _reference(_mlp(), x)) >= 0.99
    assert "why not int4" in capsys.readouterr().out


def test_max_drop_needs_data(files, capsys):
    args = ["compile", str(files / "mlp.onnx"), "-o", str(files / "nodata"), "--quantize", "int4"]
    assert main([*args, "--int4-method", "rtn", "--max-drop", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--max-drop needs data" in err
    assert not (files / "nodata").exists()


def test_switch_graph_reads_the_int4_table_except_for_the_reference():
    model = mb.embedding_matmul()
    table, w = (numpy_helper.to_array(t) for t in model.graph.initializer)
    mod = run_passes(import_onnx(model).mod, instantiate(parse_pipeline("fold-constants")))
    layers = find_layers(mod["main"])
    int4 = {ly.name: quantize_rtn(ly.weight, 32, True) for ly in layers}
    dq4 = {name: q.dequantize() for name, q in int4.items()}
    dq_table = quantize_rtn(table.T, 32, True).dequantize().T

    def int4_table(call, consts):
        return dq_table if embedding_table(call, consts, 32) is not None else None

    switched = switch_module(mod, layers, int4, "fp32", int4_table)
    runner = SwitchRunner(switched, layers, "fp32", host_target())
    ids = np.random.default_rng(6).integers(0, 1024, (1, 16))
    feed = {"ids": ids}
    np.testing.assert_allclose(runner.run(None, feed), table[ids] @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runner.run({}, feed), dq_table[ids] @ w, rtol=1e-5, atol=1e-6)
    got = runner.run({"matmul_0": 4}, feed)
    np.testing.assert_allclose(got, dq_table[ids] @ dq4["matmul_0"], rtol=1e-5, atol=1e-6)
