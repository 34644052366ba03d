"""AWQ-style input scaling for int4: the scale search, the stored input multiplier, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx

import graphopt
from graphopt.cli import main
from graphopt.compress.int4.awq import input_scales, search_scale, with_input_scale
from graphopt.compress.int4.gptq import output_error
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.compress.int4.store import load_weights, save_weights
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.testing import run_module
from tests import model_builders as mb

K, N = 128, 48


def _inputs(rows: int, seed: int) -> np.ndarray:
    """Activations where 6 of 128 channels carry most of the energy (what AWQ is for)."""
    x = np.random.default_rng(seed).standard_normal((rows, K)).astype(np.float32)
    x[:, :6] *= 25.0
    return x


def _weight() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((K, N)) / 8).astype(np.float32)


def test_alpha_zero_is_plain_rounding_and_the_search_never_does_worse():
    x, w = _inputs(512, 1), _weight()
    h = x.astype(np.float64).T @ x
    np.testing.assert_allclose(input_scales(h, len(x), 0.0), 1.0)

    def rtn(ws):
        return quantize_rtn(ws, 32, True)

    s, alpha, errors = search_scale(w, h, len(x), rtn)
    assert alpha > 0 and errors[alpha] <= errors[0.0]
    q = with_input_scale(rtn(w * s[:, None]), s)
    plain = output_error(w, rtn(w), h)
    assert output_error(w, q, h) < 0.7 * plain  # the loud channels' weights kept finer


def test_input_scale_survives_the_weights_file(tmp_path):
    w, s = _weight(), np.linspace(0.5, 2.0, K).astype(np.float32)
    q = with_input_scale(quantize_rtn(w * s[:, None], 32, False), s)
    save_weights(tmp_path / "w.npz", {"matmul_0": q})
    back = load_weights(tmp_path / "w.npz")["matmul_0"]
    np.testing.assert_array_equal(back.act_scale, q.act_scale)
    np.testing.assert_array_equal(back.effective(), q.effective())


def _matmul_model() -> onnx.ModelProto:
    return mb.single_matmul(_weight())


def test_lower_int4_multiplies_the_input_by_the_stored_scale(tmp_path):
    s = np.linspace(0.5, 2.0, K).astype(np.float32)
    q = with_input_scale(quantize_rtn(_weight() * s[:, None], 32, True), s)
    save_weights(tmp_path / "w.npz", {"matmul_0": q})
    mod = run_passes(import_onnx(_matmul_model()).mod, instantiate(parse_pipeline("O1")))
    lowered = run_passes(mod, [make_pass("lower-int4", {"weights": str(tmp_path / "w.npz")})])
    x = _inputs(16, 2)
    want = (x * q.act_scale) @ q.dequantize()
    np.testing.assert_allclose(run_module(lowered, [x])[0], want, rtol=1e-5, atol=1e-4)


def test_compile_with_awq(tmp_path, capsys):
    onnx.save(_matmul_model(), tmp_path / "mm.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(256, 3))
    base = ["compile", str(tmp_path / "mm.onnx"), "--quantize", "int4", "--int4-method", "rtn"]
    assert main([*base, "-o", str(tmp_path / "bad"), "--int4-awq"]) == 2
    assert "--int4-awq needs --calibration" in capsys.readouterr().err
    calib = ["--calibration", str(tmp_path / "calib.npz")]
    assert main([*base, "-o", str(tmp_path / "awq"), *calib, "--int4-awq"]) == 0
    plain = [*calib, "--no-int4-smooth"]  # no input scaling (W4A8 would smooth by default)
    assert main([*base, "-o", str(tmp_path / "plain"), *plain]) == 0
    row = json.loads((tmp_path / "awq" / "manifest.json").read_text())["int4"]["layers"][0]
    assert row["awq_alpha"] > 0 and row["mse"] < row["rtn_mse"]
    x = _inputs(16, 4)  # other samples with the same loud channels
    want = x @ _weight()
    err = {
        name: np.linalg.norm(graphopt.load(tmp_path / name).run({"x": x})["y"] - want)
        for name in ("awq", "plain")
    }
    assert err["awq"] < 0.8 * err["plain"], err
