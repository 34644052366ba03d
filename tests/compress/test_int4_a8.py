"""`--quantize int4 --int4-activations int8` (W4A8): the compiled model runs the op's
arithmetic, the budget scores rounded activations, bad values are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.compress.common.layers import find_layers
from graphopt.compress.int4.budget import SwitchRunner, switch_module
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.frontend import import_onnx
from graphopt.int4_a8_ops import fake_quant_rows, reference_a8_matmul
from graphopt.int4_ops import Int4MatmulSpec
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import host_target

K, H, N = 96, 64, 16


def _mlp() -> onnx.ModelProto:
    """x[6, 96] -> MatMul -> Relu -> MatMul -> y[6, 16]."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((K, H)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((H, N)) / 8).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, N])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("int4a8")
    onnx.save(_mlp(), root / "mlp.onnx")
    rng = np.random.default_rng(1)
    np.savez(root / "eval.npz", x=rng.standard_normal((32, K)).astype(np.float32))
    return root


def _compile(files, name: str, *flags: str):
    out = files / name
    args = ["compile", str(files / "mlp.onnx"), "-o", str(out), "--quantize", "int4"]
    assert main([*args, "--int4-method", "rtn", "--no-int4-clip", *flags]) == 0
    return graphopt.load(out), json.loads((out / "manifest.json").read_text())["int4"]


def test_w4a8_artifact_runs_the_op_arithmetic(files, capsys):
    art, m = _compile(files, "a8", "--int4-activations", "int8", "--no-int4-symmetric")
    assert m["activations"] == "int8" and m["int4_layers"] == 2
    assert "W4A8" in capsys.readouterr().out
    x = np.random.default_rng(2).standard_normal((6, K)).astype(np.float32)
    model = _mlp()
    w1, w2 = (numpy_helper.to_array(t) for t in model.graph.initializer)
    want = x
    for i, w in enumerate((w1, w2)):
        q = quantize_rtn(w, 32, False)
        spec = Int4MatmulSpec(want.shape, w.shape[1], 32, False, act="int8")
        want = reference_a8_matmul(want, q.packed, q.scales, q.zeros, spec)
        want = np.maximum(want, 0) if i == 0 else want
    np.testing.assert_array_equal(art.run({"x": x})["y"], want)


def test_budget_graph_rounds_w4a8_inputs():
    mod = import_onnx(_mlp()).mod
    mod = run_passes(mod, instantiate(parse_pipeline("fold-constants")))
    layers = find_layers(mod["main"])
    int4 = {ly.name: quantize_rtn(ly.weight, 32, True) for ly in layers}
    switched = switch_module(mod, layers, int4, "fp32", a8=True)
    runner = SwitchRunner(switched, layers, "fp32", host_target())
    x = np.random.default_rng(3).standard_normal((6, K)).astype(np.float32)
    w1, w2 = (ly.weight for ly in layers)
    h = np.maximum(fake_quant_rows(x) @ int4["matmul_0"].dequantize(), 0)
    got = runner.run({"matmul_0": 4}, {"x": x})
    np.testing.assert_allclose(got, h @ w2, rtol=1e-4, atol=1e-5)
    plain = switch_module(mod, layers, int4, "fp32")  # W4 x fp32: the input as it is
    got = SwitchRunner(plain, layers, "fp32", host_target()).run({"matmul_0": 4}, {"x": x})
    np.testing.assert_allclose(got, np.maximum(x @ int4["matmul_0"].dequantize(), 0) @ w2, 1e-4)


def test_w4a8_under_a_budget(files):
    budget = ["--max-drop", "0.5", "--quant-metric", "cosine", "--eval", str(files / "eval.npz")]
    _art, m = _compile(files, "a8budget", "--int4-activations", "int8", *budget)
    acc = m["accuracy"]
    assert acc["artifact"] >= acc["fp32"] - 0.5 - 1e-9
    assert m["settings"]["activations"] == "int8"


def test_unknown_activation_type_is_an_error(files, capsys):
    args = ["compile", str(files / "mlp.onnx"), "-o", str(files / "bad"), "--quantize", "int4"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--int4-activations", "int4"])
    assert e.value.code == 2
    assert "--int4-activations" in capsys.readouterr().err
