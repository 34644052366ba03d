"""int4 weights (graphopt/compress/int4): packing, round-to-nearest, GPTQ, the weights file."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.compress.int4.gptq import output_error, quantize_gptq
from graphopt.compress.int4.quant import pack_nibbles, quantize_rtn, unpack_nibbles
from graphopt.compress.int4.store import load_weights, save_weights


@pytest.mark.parametrize("k", [1, 2, 7, 32, 33, 128])
def test_pack_round_trip(k):
    rng = np.random.default_rng(k)
    q = rng.integers(0, 16, (5, k)).astype(np.uint8)
    packed = pack_nibbles(q)
    assert packed.shape == (5, (k + 1) // 2) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_nibbles(packed, k), q)
    # k = 2i is the low nibble of byte i, k = 2i + 1 the high one (ONNX MatMulNBits' order)
    assert int(packed[0, 0] & 15) == q[0, 0]
    if k > 1:
        assert int(packed[0, 0] >> 4) == q[0, 1]


def test_pack_rejects_values_above_15():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_nibbles(np.array([[16]], np.uint8))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k,group", [(96, 32), (70, 32), (130, 64), (128, 128)])
def test_rtn_error_is_at_most_half_a_step(symmetric, k, group):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, 6)) + (0 if symmetric else 0.7)).astype(np.float32)
    q = quantize_rtn(w, group, symmetric)
    groups = -(-k // group)
    assert q.scales.shape == (6, groups)
    assert (q.zeros is None) == symmetric
    step = np.repeat(q.scales, group, axis=1)[:, :k].T
    assert np.all(np.abs(q.dequantize() - w) <= step / 2 + 1e-6)
    if symmetric:  # each group's largest |w| is exact
        for g in range(groups):
            blk = w[g * group : (g + 1) * group]
            cols = np.arange(6)
            i = np.abs(blk).argmax(axis=0)
            np.testing.assert_allclose(q.dequantize()[g * group + i, cols], blk[i, cols], rtol=1e-6)


def test_asymmetric_beats_symmetric_on_shifted_weights():
    rng = np.random.default_rng(1)
    w = (rng.uniform(0, 1, (64, 16))).astype(np.float32)
    err = [np.abs(quantize_rtn(w, 32, s).dequantize() - w).mean() for s in (True, False)]
    assert err[1] < 0.7 * err[0]


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_with_identity_hessian_is_rtn(symmetric):
    """No correlation between inputs: nothing to compensate, the same codes as rounding."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((96, 8)).astype(np.float32)
    g = quantize_gptq(w, np.eye(96), 32, symmetric, damp=0.0)
    r = quantize_rtn(w, 32, symmetric)
    np.testing.assert_array_equal(g.packed, r.packed)
    np.testing.assert_array_equal(g.scales, r.scales)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_lowers_the_output_error_on_correlated_inputs(symmetric):
    rng = np.random.default_rng(3)
    k = 128
    mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)
    x = rng.standard_normal((2000, k)) @ mix * np.exp(rng.standard_normal(k))
    h = x.T @ x
    w = (rng.standard_normal((k, 32)) * 0.05).astype(np.float32)
    gptq = output_error(w, quantize_gptq(w, h, 32, symmetric), h)
    rtn = output_error(w, quantize_rtn(w, 32, symmetric), h)
    assert gptq < 0.8 * rtn


def test_gptq_zeroes_dead_inputs():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 4)).astype(np.float32)
    x = rng.standard_normal((500, 64))
    x[:, 5] = 0.0
    q = quantize_gptq(w, x.T @ x, 32)
    np.testing.assert_array_equal(q.dequantize()[5], 0.0)


def test_weights_file_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    ws = {
        "matmul_0": quantize_rtn(rng.standard_normal((33, 4)).astype(np.float32), 32, True),
        "matmul_1": quantize_rtn(rng.standard_normal((64, 3)).astype(np.float32), 64, False),
    }
    save_weights(tmp_path / "w.npz", ws)
    back = load_weights(tmp_path / "w.npz")
    assert set(back) == set(ws)
    for name, q in ws.items():
        np.testing.assert_array_equal(back[name].dequantize(), q.dequantize())
        assert (back[name].k, back[name].group) == (q.k, q.group)


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_raises_the_weighted_error(symmetric):
    rng = np.random.default_rng(6)
    w = rng.standard_t(3, (128, 16)).astype(np.float32)  # heavy tails: clipping pays
    imp = rng.uniform(0.1, 5, 128)
    plain = quantize_rtn(w, 32, symmetric)
    clipped = quantize_rtn(w, 32, symmetric, clip=True, importance=imp)

    def err(q):
        return (((q.dequantize() - w) ** 2) * imp[:, None]).sum()

    assert err(clipped) < err(plain)
    assert np.all(clipped.scales <= plain.scales + 1e-7)  # ranges only shrink


@pytest.mark.parametrize("symmetric", [True, False])
def test_act_order_and_clip_lower_gptq_error(symmetric):
    rng = np.random.default_rng(7)
    k = 128
    x = rng.standard_normal((2000, k)) @ (rng.standard_normal((k, k)) * 0.3 + np.eye(k))
    x *= np.exp(rng.standard_normal(k))
    h = x.T @ x
    w = (rng.standard_normal((k, 32)) * 0.05).astype(np.float32)
    plain = output_error(w, quantize_gptq(w, h, 32, symmetric), h)
    both = output_error(w, quantize_gptq(w, h, 32, symmetric, clip=True, act_order=True), h)
    assert both < 0.8 * plain


@pytest.mark.parametrize("symmetric", [True, False])
def test_fp16_scales_codes_fit_the_stored_scale(symmetric):
    rng = np.random.default_rng(8)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    q = quantize_rtn(w, 32, symmetric, scale_dtype="float16")
    assert q.scales.dtype == np.float16
    step = np.repeat(q.scales.astype(np.float32), 32, axis=1).T
    assert np.all(np.abs(q.dequantize() - w) <= step / 2 + 1e-6)


def test_hessian_rows_leave_out_padding():
    from graphopt.compress.int4.hessian import _rows

    x = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(_rows(x, mask), x[[0, 0, 1], [0, 1, 0]])
    assert _rows(x, None).shape == (6, 4)
    assert _rows(x, np.ones((2, 5))).shape == (6, 4)  # a mask of another shape: every row
