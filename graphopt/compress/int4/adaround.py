"""AdaRound-style adaptive rounding of group-wise int4 weights (Nagel et al. 2020, "Up or
Down? Adaptive Rounding for Post-Training Quantization").

Round-to-nearest picks each weight's nearest level on its own; the layer's output error
depends on how the rounding errors of a row combine over the inputs. AdaRound keeps the
grid (each group's scale and zero point, from the range search) and learns, per weight,
whether to round down or up: code = floor(w / s) + z + h(V), h(V) = clip(sigmoid(V) (zeta -
gamma) + gamma, 0, 1) a rectified sigmoid, V learned by Adam on

    || X_q Q - X W ||^2 / norm  +  lam * mean(1 - |2 h - 1|^beta)

with X the layer's fp32 inputs, X_q the inputs the quantized model feeds it (W4A8: rounded
per row), Q = (code - z) s. The regularizer, off for the first `warmup` of the iterations,
then with beta annealed from 20 to 2, pushes every h to 0 or 1; the result rounds h at 0.5.
A step costs one K x K x N product through H = X_q^T X_q and B = X_q^T X W, or, with fewer
rows than K / 2 (a classifier's pooled rows), two through the rows. Each code
stays within one step of round-to-nearest's (floor or floor + 1); a layer keeps the grid's
round-to-nearest codes when the learned ones do not lower the output error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quant import SYM_ZERO, Int4Weight, from_codes

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundOptions:
    iters: int = 1000
    # regularizer weight (the reconstruction term is ~1 at plain rounding); on a random
    # 96 x 64 layer 0.01 lowered the error 10%, 3 52% (GPTQ: 44%)
    lam: float = 3.0
    lr: float = 0.03  # Adam step on V
    warmup: float = 0.2  # fraction of iterations without the regularizer
    beta: tuple[float, float] = (20.0, 2.0)  # annealed from the first to the second


def grid(q: Int4Weight) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero) of each weight, fp32 [K, N], of an int4 weight's groups."""
    s = np.repeat(q.scales.astype(np.float32).T, q.group, axis=0)[: q.k]
    if q.zeros is None:
        return s, np.full_like(s, SYM_ZERO)
    return s, np.repeat(q.zeros.astype(np.float32).T, q.group, axis=0)[: q.k]


def output_error(xq: np.ndarray, y: np.ndarray, q: np.ndarray) -> float:
    """||X_q Q - Y||^2 per row."""
    d = np.asarray(xq, np.float64) @ np.asarray(q, np.float64) - y
    return float((d * d).sum()) / max(len(xq), 1)


def _gradient(xq: np.ndarray, y: np.ndarray):
    """d/dQ ||X_q Q - Y||^2 / rows, as a function of Q, in the cheaper form: through the
    rows (2 rows K N a step), or through H = X_q^T X_q and B = X_q^T Y (K K N a step)."""
    m, k = xq.shape
    if 2 * m < k:
        x32, y32 = np.asarray(xq, np.float32), np.asarray(y, np.float32)
        return lambda q: (2.0 / m) * (x32.T @ (x32 @ q - y32))
    h = (np.asarray(xq, np.float64).T @ xq / m).astype(np.float32)
    b = (np.asarray(xq, np.float64).T @ y / m).astype(np.float32)
    return lambda q: 2.0 * (h @ q - b)


def _rect_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h(V) and dh/dV."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    inside = (raw > 0) & (raw < 1)
    return np.clip(raw, 0, 1), np.where(inside, sig * (1 - sig) * (ZETA - GAMMA), 0)


def _init_v(rest: np.ndarray) -> np.ndarray:
    """V with h(V) = rest (the fractional part of w / s)."""
    r = np.clip(rest, 0.01, 0.99)
    return -np.log((ZETA - GAMMA) / (r - GAMMA) - 1.0)


def adaround(
    w: np.ndarray,
    xq: np.ndarray,
    y: np.ndarray,
    start: Int4Weight,
    o: AdaRoundOptions | None = None,
) -> tuple[Int4Weight, dict]:
    """The int4 weight on `start`'s grid with learned rounding of w [K, N] (the weight in the
    quantized layer's space: AWQ / smoothing scale applied) fitting X_q Q to Y = X W on the
    rows xq [M, K], y [M, N]. Returns the weight (`start`'s codes where learning did not
    lower the error) and both output errors per row."""
    o = o or AdaRoundOptions()
    s, z = grid(start)
    w = np.asarray(w, np.float32)
    base = np.floor(w / s) + z
    free = (base >= 0) & (base <= 14)  # others are clipped: their code is start's
    fixed = start.codes().T.astype(np.float32)
    gradient = _gradient(xq, y)
    # the reconstruction term in units of plain rounding's expected error (s^2 / 12 a weight)
    energy = float((np.asarray(xq, np.float64) ** 2).sum()) / max(len(xq), 1)
    norm = max(energy * float(np.mean(s.astype(np.float64) ** 2)) / 12 * w.shape[1], 1e-30)
    v = _init_v(w / s + z - base)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    warm = int(o.warmup * o.iters)
    for t in range(o.iters):
        hv, dh = _rect_sigmoid(v)
        grad = gradient((np.where(free, base + hv, fixed) - z) * s) * s / norm
        if t >= warm:
            beta = o.beta[0] + (o.beta[1] - o.beta[0]) * (t - warm) / max(o.iters - warm, 1)
            d = 2 * hv - 1
            grad -= (o.lam / v.size) * beta * np.abs(d) ** (beta - 1) * np.sign(d) * 2
        g = np.where(free, grad * dh, 0.0)
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        step = m1 / (1 - 0.9 ** (t + 1)) / (np.sqrt(m2 / (1 - 0.999 ** (t + 1))) + 1e-8)
        v = v - o.lr * step
    hard = np.clip(np.where(free, base + (v >= 0), fixed), 0, 15)  # h(V) >= 0.5 at V >= 0
    learned = output_error(xq, y, (hard - z) * s)
    plain = output_error(xq, y, (fixed - z) * s)
    codes = hard if learned <= plain else fixed
    q = from_codes(codes.T, start.scales, start.zeros, start.k, start.group, start.symmetric,
                   str(start.scales.dtype))  # fmt: skip
    q.act_scale = start.act_scale
    return q, {"start": plain, "adaround": learned, "learned": bool(learned <= plain)}
