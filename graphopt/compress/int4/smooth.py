"""SmoothQuant-style input scaling for W4A8 (after Xiao et al. 2023), searched per layer on
what the W4A8 kernels compute.

W4A8 rounds each row of a layer's input to int8 with one scale per row (`int4_a8_ops`): an
input channel that runs far larger than the rest sets that scale, and every other channel of
the row keeps fewer levels. Dividing input channel k by s_k and multiplying weight row k by it
(x @ W = (x / s) @ (s W)) moves part of that range into the weights, which int4 rounds in
groups with their own scales. s = max|x_k|^a over the calibration rows (a channel's maximum
at least a tenth of the median channel's; normalized to max x min = 1); a in 0, 0.1, .., 1
is chosen per layer by the W4A8 output error on a sample of the calibration rows,

    || X W - rowq(X * (1 / s)) @ Q(s W) ||^2     (rowq: the kernels' per-row int8 rounding)

with Q the rounding `quantize` gives (the range search, weighted by the scaled inputs' energy).
Unlike AWQ's trace(D^T H D), which sees only the weights' error, this counts the activations'
rounding, so it is the objective of the kernels that run. a = 0 is no scaling: on those rows
the search never does worse than plain W4A8. GPTQ then runs on the scaled problem as after
AWQ (`awq.scaled_hessian`), and the kernel's input is multiplied by 1 / s
(`Int4Weight.act_scale`, `awq.with_input_scale`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...int4_a8_ops import fake_quant_rows
from .awq import ALPHAS, with_input_scale
from .quant import Int4Weight

# A channel's maximum counts as at least this share of the median channel's: a channel (almost)
# never active on the calibration data (a ReLU's dead channel) would otherwise get 1 / s_k in
# the thousands, and one value of it on other inputs would set its whole row's int8 scale.
FLOOR = 0.1


def smooth_scales(amax: np.ndarray, alpha: float) -> np.ndarray:
    """s [K] = max(max|x_k|, FLOOR x the median channel's)^alpha, normalized to max * min = 1."""
    amax = np.asarray(amax, np.float64)
    floor = max(FLOOR * float(np.median(amax)), 1e-8)
    s = np.maximum(amax, floor) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def a8_output_error(x: np.ndarray, w: np.ndarray, q: Int4Weight) -> float:
    """||x W - rowq(x * act_scale) @ (q - z) s||^2: the W4A8 kernels' output error on rows x
    [M, K] (integer sums in float: the kernels' are exact, their fp32 adds in another order)."""
    x = np.asarray(x, np.float32)
    xs = x if q.act_scale is None else x * q.act_scale
    d = x @ np.asarray(w, np.float32) - fake_quant_rows(xs) @ q.dequantize()
    return float(np.sum(d.astype(np.float64) ** 2))


def search_smooth(
    w: np.ndarray,
    x: np.ndarray,
    amax: np.ndarray,
    quantize: Callable[[np.ndarray, np.ndarray], Int4Weight],
) -> tuple[np.ndarray, float, dict[float, float]]:
    """(s [K], best alpha, W4A8 output error per alpha) for W [K, N], calibration rows x
    [M, K] and the channels' maxima amax [K] over every calibration row.
    quantize(s W, s): the int4 weight of the scaled problem."""
    w = np.asarray(w, np.float32)
    errors: dict[float, float] = {}
    best: tuple[np.ndarray | None, float] = (None, 0.0)
    for alpha in ALPHAS:
        s = smooth_scales(amax, alpha)
        q = quantize(w * s[:, None], s)
        errors[alpha] = a8_output_error(x, w, with_input_scale(q, s))
        if best[0] is None or errors[alpha] < errors[best[1]]:
            best = (s, alpha)
    assert best[0] is not None
    return best[0], best[1], errors
