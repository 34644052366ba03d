"""Activation-aware scaling (AWQ, Lin et al. 2023) before int4 rounding.

A few input channels of a matmul carry most of the activation energy; their weights matter
most, and group-wise int4 rounds them as coarsely as the rest. AWQ scales weight row k up by
s_k and the input down by it (x @ W = (x / s) @ (s W)), so the important rows take more of
their group's range. With s = rms(x)^a (normalized so max * min = 1) and a searched over
0, 0.1, .., 1 per layer, a is the one whose quantized weights give the least output error
trace(D^T H D) on the calibration inputs (H = X^T X, D = W - Q(s W) / s). a = 0 is plain
quantization, so the search never does worse than it on the calibration data.

The kernel computes (x * (1 / s)) @ Q(s W): `Int4Weight.act_scale` holds 1 / s, and
`lower-int4` puts the multiply in front of the op. GPTQ can run on the scaled problem
(weights s W, inputs x / s: H' = H / (s s^T)).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .quant import Int4Weight

ALPHAS = tuple(i / 10 for i in range(11))


def _output_error(h32: np.ndarray, d: np.ndarray) -> float:
    """trace(D^T H D) in float32 (BLAS): only compared between candidates of one layer."""
    d = d.astype(np.float32)
    return float(np.sum((h32 @ d) * d, dtype=np.float64))


def input_scales(h: np.ndarray, rows: int, alpha: float) -> np.ndarray:
    """s [K] = rms(x_k)^alpha over the calibration rows, normalized to max * min = 1."""
    rms = np.sqrt(np.maximum(np.diag(h) / max(rows, 1), 0.0))
    s = np.maximum(rms, 1e-8) ** alpha
    s = np.maximum(s, 1e-4)
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def search_scale(
    w: np.ndarray,
    h: np.ndarray,
    rows: int,
    quantize: Callable[[np.ndarray], Int4Weight],
) -> tuple[np.ndarray, float, dict[float, float]]:
    """(s [K], best alpha, output error per alpha) for W [K, N], its inputs' H [K, K]."""
    w = np.asarray(w, np.float32)
    h32 = np.asarray(h, np.float32)
    errors: dict[float, float] = {}
    best = (None, 0.0)
    for alpha in ALPHAS:
        s = input_scales(h, rows, alpha)
        q = quantize(w * s[:, None])
        errors[alpha] = _output_error(h32, w - q.dequantize() / s[:, None])
        if best[0] is None or errors[alpha] < errors[best[1]]:
            best = (s, alpha)
    return best[0], best[1], errors


def scaled_hessian(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """H of the inputs x / s: diag(1 / s) H diag(1 / s)."""
    inv = 1.0 / np.asarray(s, np.float64)
    return np.asarray(h, np.float64) * inv[:, None] * inv[None, :]


def with_input_scale(q: Int4Weight, s: np.ndarray) -> Int4Weight:
    """q (quantized from s W) with the kernel's input multiplier 1 / s."""
    act = (1.0 / np.asarray(s, np.float64)).astype(np.float32)
    return Int4Weight(q.packed, q.scales, q.zeros, q.k, q.group, act)
