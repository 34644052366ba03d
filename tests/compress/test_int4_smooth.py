"""W4A8 input smoothing (smooth.py): the objective is the W4A8 kernels' arithmetic, the search
never does worse than no scaling, the row sample, and the compile (the default with
calibration data for W4A8, the flags' errors, the artifact against the numpy W4A8 model)."""

from __future__ import annotations

import json

import numpy as np
import onnx

import graphopt
from graphopt.cli import main
from graphopt.compress.int4.awq import with_input_scale
from graphopt.compress.int4.hessian import RowSample
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.compress.int4.smooth import a8_output_error, search_smooth, smooth_scales
from graphopt.int4_a8_ops import reference_a8_matmul
from graphopt.int4_ops import Int4MatmulSpec
from tests import model_builders as mb

K, N = 128, 48


def _inputs(rows: int, seed: int) -> np.ndarray:
    """Activations where 3 of 128 channels run 40x larger than the rest: per-row int8
    rounding gives the other channels a few levels only (what smoothing is for)."""
    x = np.random.default_rng(seed).standard_normal((rows, K)).astype(np.float32)
    x[:, [5, 40, 99]] *= 40.0
    return x


def _weight() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((K, N)) / 8).astype(np.float32)


def _rtn(ws: np.ndarray, _s=None):
    return quantize_rtn(ws, 32, False)


def test_objective_is_the_w4a8_kernels_output_error():
    x, w = _inputs(24, 1), _weight()
    s = np.linspace(0.5, 2.0, K).astype(np.float32)
    q = with_input_scale(_rtn(w * s[:, None]), s)
    spec = Int4MatmulSpec((24, K), N, 32, False, act="int8")
    got = reference_a8_matmul(x * q.act_scale, q.packed, q.scales, q.zeros, spec)
    want = float(np.sum((x @ w - got).astype(np.float64) ** 2))
    np.testing.assert_allclose(a8_output_error(x, w, q), want, rtol=1e-4)


def test_scales_follow_the_channel_maxima():
    amax = np.array([1.0, 4.0, 16.0], np.float32)
    np.testing.assert_allclose(smooth_scales(amax, 0.0), 1.0)
    np.testing.assert_allclose(smooth_scales(amax, 0.5), [0.5, 1.0, 2.0], rtol=1e-6)


def test_search_never_does_worse_and_smoothing_wins_on_outlier_channels():
    x, w = _inputs(512, 2), _weight()
    s, alpha, errors = search_smooth(w, x, np.abs(x).max(0), _rtn)
    assert errors[alpha] == min(errors.values()) and alpha > 0
    assert errors[alpha] < 0.5 * errors[0.0], errors
    held = _inputs(256, 3)  # other rows with the same loud channels
    plain = a8_output_error(held, w, _rtn(w))
    assert a8_output_error(held, w, with_input_scale(_rtn(w * s[:, None]), s)) < 0.6 * plain


def test_row_sample_keeps_maxima_of_every_row_and_caps_the_rows():
    sample = RowSample(feeds=4, cap=40)
    rng = np.random.default_rng(4)
    parts = [rng.standard_normal((100, 8)).astype(np.float32) for _ in range(4)]
    for x in parts:
        sample.add("matmul_0", x)
    np.testing.assert_array_equal(sample.maxes["matmul_0"], np.abs(np.concatenate(parts)).max(0))
    rows = sample.rows("matmul_0")
    assert 20 <= len(rows) <= 40
    np.testing.assert_array_equal(rows[:10], parts[0][::10])


def _matmul_model() -> onnx.ModelProto:
    return mb.single_matmul(_weight())


def _compile(tmp_path, name: str, *flags: str):
    base = ["compile", str(tmp_path / "mm.onnx"), "--quantize", "int4", "--no-int4-symmetric"]
    calib = ["--calibration", str(tmp_path / "calib.npz")]
    assert main([*base, *calib, "-o", str(tmp_path / name), *flags]) == 0
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())["int4"]
    return graphopt.load(tmp_path / name), manifest


def test_compile_smooths_w4a8_by_default(tmp_path, capsys):
    onnx.save(_matmul_model(), tmp_path / "mm.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(256, 5))
    smooth, m = _compile(tmp_path, "smooth")
    assert m["settings"]["smooth"] is None and m["layers"][0]["smooth_alpha"] > 0
    plain, m_plain = _compile(tmp_path, "plain", "--no-int4-smooth")
    assert "smooth_alpha" not in m_plain["layers"][0]
    _, m_fp32 = _compile(tmp_path, "fp32", "--int4-activations", "fp32")
    assert "smooth_alpha" not in m_fp32["layers"][0]  # the objective is W4A8's
    x = _inputs(16, 6)
    want = x @ _weight()
    err = {k: np.linalg.norm(a.run({"x": x})["y"] - want) for k, a in (("s", smooth), ("p", plain))}
    assert err["s"] < 0.95 * err["p"], err  # GPTQ compensates much of it already


def test_artifact_computes_the_numpy_w4a8_model_of_the_smoothed_weights(tmp_path):
    """Round to nearest after smoothing, rebuilt here as the compile does it (every
    calibration row sampled: 16 feeds of 16 rows), against the numpy W4A8 model."""
    onnx.save(_matmul_model(), tmp_path / "mm.onnx")
    calib = _inputs(256, 7)
    np.savez(tmp_path / "calib.npz", x=calib)
    art, m = _compile(tmp_path, "rtn", "--int4-method", "rtn")
    h = calib.astype(np.float64).T @ calib.astype(np.float64)

    def rtn(ws, sc):
        return quantize_rtn(ws, 32, False, True, np.diag(h) / np.asarray(sc, np.float64) ** 2)

    w = _weight()
    s, alpha, _ = search_smooth(w, calib, np.abs(calib).max(0), rtn)
    assert alpha == m["layers"][0]["smooth_alpha"] > 0
    q = with_input_scale(rtn(w * s[:, None], s), s)
    x = _inputs(16, 8)
    spec = Int4MatmulSpec((16, K), N, 32, False, act="int8")
    want = reference_a8_matmul(x * q.act_scale, q.packed, q.scales, q.zeros, spec)
    np.testing.assert_allclose(art.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def test_flag_errors(tmp_path, capsys):
    onnx.save(_matmul_model(), tmp_path / "mm.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(64, 9))
    base = ["compile", str(tmp_path / "mm.onnx"), "--quantize", "int4", "-o", str(tmp_path / "o")]
    calib = ["--calibration", str(tmp_path / "calib.npz")]
    cases = [
        (["--int4-method", "rtn", "--int4-smooth"], "--int4-smooth needs --calibration"),
        ([*calib, "--int4-smooth", "--int4-awq"], "pick one"),
        ([*calib, "--int4-smooth", "--int4-activations", "fp32"], "is for W4A8"),
    ]
    for flags, message in cases:
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: "), err


def test_channels_dead_on_calibration_get_no_large_input_multiplier():
    """A channel that never fired on the calibration data is floored at a tenth of the median
    channel's maximum: on other inputs a value in it must not set its row's int8 scale."""
    amax = np.full(8, 2.0)
    amax[3] = 0.0
    s = smooth_scales(amax, 1.0)
    np.testing.assert_allclose(s.max() / s[3], 10.0, rtol=1e-6)
