"""AdaRound int4 (`--int4-method adaround`): learned up/down rounding on the quantized model's
inputs; and the byte-aware order of the --max-drop ladder."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt.cli import main
from graphopt.compress.common.layers import find_layers
from graphopt.compress.int4.adaround import AdaRoundOptions, adaround
from graphopt.compress.int4.budget import ladder_order, size_limit
from graphopt.compress.int4.layers import int4_layers, layer_weight, weight_matrix
from graphopt.compress.int4.qinputs import fake_quant_module
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.compress.int8.calibrate import tap_module
from graphopt.frontend import import_onnx
from graphopt.int4_a8_ops import fake_quant_rows
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.testing import run_module
from tests.model_builders import GraphBuilder, _value_info

K, N, ROWS = 96, 48, 1024


def _layer(seed: int = 0):
    """A layer's correlated fp32 inputs X, the quantized model's inputs X_q (X plus the error
    earlier layers left), and W."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, K)) @ (np.eye(K) + 0.3 * rng.standard_normal((K, K)))
    xq = x + 0.05 * rng.standard_normal(x.shape)
    w = (0.1 * rng.standard_normal((K, N))).astype(np.float32)
    return x, xq, w


def test_adaround_rounds_each_weight_up_or_down_and_beats_rounding():
    x, xq, w = _layer()
    start = quantize_rtn(w, 32, True, clip=True, scale_dtype="float16")
    q, errors = adaround(w, xq, x @ w, start, AdaRoundOptions(iters=400))
    step = q.codes().astype(int) - start.codes().astype(int)
    assert np.abs(step).max() == 1  # some weights rounded the other way, none further
    np.testing.assert_array_equal(q.scales, start.scales)  # the same grid
    # the errors are the real output errors on the rows, and the learned one is lower
    true = [float(((xq @ r.dequantize() - x @ w) ** 2).sum()) / ROWS for r in (start, q)]
    np.testing.assert_allclose([errors["start"], errors["adaround"]], true, rtol=1e-4)
    assert errors["learned"] and true[1] < 0.8 * true[0]


def test_adaround_keeps_rounding_that_learning_does_not_beat():
    x, xq, w = _layer(1)
    start = quantize_rtn(w, 32, False)
    bad = AdaRoundOptions(iters=30, lam=0.0, lr=5.0)  # a step so large it learns noise
    q, errors = adaround(w, xq, x @ w, start, bad)
    assert not errors["learned"] and errors["adaround"] > errors["start"]
    np.testing.assert_array_equal(q.codes(), start.codes())
    np.testing.assert_array_equal(q.zeros, start.zeros)


def test_adaround_through_few_rows_is_the_same_fit():
    """Fewer rows than K / 2 (a classifier's pooled rows): the gradient goes through the rows
    instead of H; both forms learn the same rounding."""
    x, xq, w = _layer(2)
    x, xq = x[:40], xq[:40]
    start = quantize_rtn(w, 32, True)
    q, errors = adaround(w, xq, x @ w, start, AdaRoundOptions(iters=200))
    wide = np.concatenate([xq, np.zeros((60, K))])  # 100 rows: the H form, same problem
    y = np.concatenate([x @ w, np.zeros((60, N))])
    q2, errors2 = adaround(w, wide, y, start, AdaRoundOptions(iters=200))
    assert errors["adaround"] < errors["start"]
    assert (q.codes() != q2.codes()).mean() < 0.01


def test_ladder_by_bytes_puts_small_sensitive_layers_first():
    rows = [
        {"layer": "big", "sqnr_db": 20.0},  # noise 0.01 over 1000 bytes
        {"layer": "small", "sqnr_db": 23.0},  # noise 0.005 over 10 bytes
        {"layer": "mid", "sqnr_db": 30.0},  # noise 0.001 over 100 bytes
    ]
    assert ladder_order(rows) == ["big", "small", "mid"]
    cost = {"big": 1000, "small": 10, "mid": 100}
    assert ladder_order(rows, cost) == ["small", "big", "mid"]  # 5e-4, 1e-5, 1e-5 per byte
    cost["mid"] = 50
    assert ladder_order(rows, cost) == ["small", "mid", "big"]


def test_size_limit_is_the_last_level_that_fits():
    order = ["a", "b", "c"]
    size = {4: 1, 8: 2, 32: 8}

    def fits(bits: dict) -> bool:
        return sum(size[b] for b in bits.values()) <= 5  # all int4: 3; each int8 adds 1

    assert size_limit(order, "int8", fits) == 2  # a, b int8: 5; all three: 6
    assert size_limit(order, "fp32", fits) == 0  # one fp32 layer alone: 10
    assert size_limit(order, "int8", lambda _b: True) == 6


def _cnn() -> onnx.ModelProto:
    """1x1 32 -> 64, ReLU, depthwise 3x3, ReLU, 1x1 64 -> 32, average pool, Gemm 32 -> 10."""
    g = GraphBuilder(5)
    h = g.op("Relu", [g.conv("x", 32, 64, 1)])
    h = g.op("Relu", [g.conv(h, 64, 64, 3, group=64, pad=1)])
    h = g.op("Flatten", [g.op("GlobalAveragePool", [g.conv(h, 64, 32, 1)])], axis=1)
    logits = g.op("Gemm", [h, g.weight([10, 32], 0.25), g.weight([10], 0.1, "b")], transB=1)
    return g.model([_value_info("x", [1, 32, 8, 8])], [("logits", logits, [1, 10])], "cnn")


def test_fake_quant_module_feeds_each_layer_its_quantized_input():
    mod = run_passes(import_onnx(_cnn()).mod, instantiate(parse_pipeline("fold-constants")))
    layers = int4_layers(mod["main"])
    int4 = {ly.name: quantize_rtn(weight_matrix(ly), 32, True) for ly in layers}
    fake = fake_quant_module(mod, int4, a8=True)
    fake_layers = {ly.name: ly for ly in find_layers(fake["main"])}
    assert list(fake_layers) == [ly.name for ly in find_layers(mod["main"])]
    for ly in layers:  # the int4 values as the layers' weights
        want = layer_weight(ly, int4[ly.name].dequantize())
        np.testing.assert_array_equal(fake_layers[ly.name].weight, want)
    x = np.random.default_rng(0).standard_normal((1, 32, 8, 8)).astype(np.float32)
    taps = run_module(tap_module(fake)[0], [x])
    rows = fake_quant_rows(x.transpose(0, 2, 3, 1))  # rounded per pixel over the channels
    np.testing.assert_allclose(taps[0], rows.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-7)
    assert not np.allclose(taps[0], x)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaround")
    onnx.save(_cnn(), root / "cnn.onnx")
    rng = np.random.default_rng(1)
    np.savez(root / "calib.npz", x=rng.standard_normal((16, 32, 8, 8)).astype(np.float32))
    return root


def _compile(files, method: str):
    out = files / method
    args = ["compile", str(files / "cnn.onnx"), "-o", str(out), "--quantize", "int4"]
    args += ["--int4-method", method, "--calibration", str(files / "calib.npz")]
    assert main(args) == 0
    return graphopt.load(out), json.loads((out / "manifest.json").read_text())["int4"]


def test_adaround_cnn_end_to_end(files):
    art, m = _compile(files, "adaround")
    layers = {r["layer"]: r for r in m["layers"]}
    assert set(layers) == {"conv2d_0", "conv2d_2", "matmul_0"}
    assert all(r["bits"] == 4 for r in layers.values())
    for r in layers.values():  # learned where it helped, never worse on the layer's inputs
        assert r["adaround"]["adaround"] <= r["adaround"]["start"] * (1 + 1e-6)
    assert any(r["adaround"]["learned"] for r in layers.values())
    x = np.random.default_rng(7).standard_normal((4, 1, 32, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(files / "cnn.onnx"), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"x": xi})[0] for xi in x])
    got = np.concatenate([art.run({"x": xi})["logits"] for xi in x])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99, cos
    _rtn, m_rtn = _compile(files, "rtn")
    assert m_rtn["size"] == m["size"]  # the same format: only the codes differ


def test_max_size_moves_layers_to_int8_while_they_fit(files):
    out = files / "capped"
    args = ["compile", str(files / "cnn.onnx"), "-o", str(out), "--quantize", "int4"]
    args += ["--int4-method", "rtn", "--calibration", str(files / "calib.npz")]
    assert main([*args, "--int4-max-size", "0.2"]) == 0
    m = json.loads((out / "manifest.json").read_text())["int4"]
    bits = {r["layer"]: r["bits"] for r in m["layers"]}
    assert 8 in bits.values() and 4 in bits.values()  # all int4 is smaller, all int8 larger
    assert m["size"]["ratio"] <= 0.2
    reasons = {r.get("reason") for r in m["layers"] if r["bits"] == 8}
    assert reasons == {"max-size"}


def test_adaround_needs_calibration(files, capsys):
    args = ["compile", str(files / "cnn.onnx"), "-o", str(files / "x"), "--quantize", "int4"]
    assert main([*args, "--int4-method", "adaround"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --int4-method adaround needs")
