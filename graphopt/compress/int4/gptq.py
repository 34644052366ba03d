"""GPTQ-style error-compensated int4 (Frantar et al. 2022, "GPTQ", algorithm 1, static groups).

Weights W [K, N] are quantized one input row k at a time (a "column" of the paper's [N, K]
weight); the rounding error of row k, scaled by the inverse Hessian of the layer's inputs,
is fed to the rows not yet quantized, so the layer's output error ||X W - X Q||^2 on the
calibration activations X is what is minimized, not each weight's own error. H = X^T X over
the calibration rows (`hessian.py`), damped by `damp` x its mean diagonal; inputs that never
vary (H_kk = 0) get weight 0. Group parameters are computed from the updated weights when
their group starts, so they see the error fed into it. Lazy batches of `block` rows keep the
updates matrix-matrix. The result has the layout and scheme of `quant.quantize_rtn`.
"""

from __future__ import annotations

import numpy as np

from .quant import Int4Weight, dequantize_values, from_codes, group_params, quantize_values


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of H^-1 (damped), as the column updates use it."""
    k = h.shape[0]
    h = h + np.eye(k) * damp * float(np.mean(np.diag(h)))
    inv = np.linalg.inv(np.linalg.cholesky(h))  # L^-1, H = L L^T
    hinv = inv.T @ inv  # H^-1
    return np.linalg.cholesky(hinv).T  # upper U with H^-1 = U^T U


def quantize_gptq(
    w: np.ndarray,
    h: np.ndarray,
    group: int,
    symmetric: bool = True,
    damp: float = 0.01,
    block: int = 128,
) -> Int4Weight:
    """int4 of W [K, N] minimizing the output error on the inputs whose X^T X is h [K, K]."""
    work = np.array(w, np.float64)
    k, n = work.shape
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    work[dead, :] = 0.0
    u = _inverse_cholesky(h, damp)
    groups = -(-k // group)
    scales = np.zeros((groups, n), np.float32)
    zeros = np.zeros((groups, n), np.float32)
    codes = np.zeros((k, n), np.uint8)
    block = max(group, block // group * group)  # a block holds whole groups
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        errors = np.zeros((b1 - b0, n))
        for i in range(b0, b1):
            if i % group == 0:
                g = i // group
                rows = work[i : min(i + group, k)].astype(np.float32)
                scales[g], zeros[g] = group_params(rows.T, symmetric)
            g = i // group
            q = quantize_values(work[i].astype(np.float32), scales[g], zeros[g])
            codes[i] = q
            err = (work[i] - dequantize_values(q, scales[g], zeros[g])) / u[i, i]
            work[i + 1 : b1] -= np.outer(u[i, i + 1 : b1], err)
            errors[i - b0] = err
        work[b1:] -= u[b0:b1, b1:].T @ errors
    return from_codes(codes.T, scales.T, zeros.T, k, group, symmetric)


def output_error(w: np.ndarray, q: Int4Weight, h: np.ndarray) -> float:
    """trace((W - Q)^T H (W - Q)): the summed squared output error over the calibration rows."""
    d = np.asarray(w, np.float64) - q.dequantize().astype(np.float64)
    return float(np.einsum("kn,kj,jn->", d, np.asarray(h, np.float64), d))
