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

from .quant import (
    Int4Weight,
    clip_search,
    dequantize_values,
    from_codes,
    group_params,
    quantize_values,
)


def inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
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
    clip: bool = False,
    act_order: bool = False,
    scale_dtype: str = "float32",
) -> Int4Weight:
    """int4 of W [K, N] minimizing the output error on the inputs whose X^T X is h [K, K].

    clip: group ranges from `clip_search` weighted by H's diagonal. act_order: rows in order
    of decreasing H_kk (the inputs with the most energy first, while there is the most room
    to compensate), with every group's parameters fixed up front from W ("static groups")."""
    k, n = np.shape(w)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w = np.where(dead[:, None], 0.0, np.asarray(w, np.float32))
    params = _GroupParams(w, group, symmetric, clip, np.diag(h), act_order, scale_dtype)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    work = w[perm].astype(np.float64)
    u = inverse_cholesky(h[np.ix_(perm, perm)], damp)
    codes = np.zeros((k, n), np.uint8)
    block = max(group, block // group * group)  # a block holds whole groups
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        errors = np.zeros((b1 - b0, n))
        for i in range(b0, b1):
            s, z = params.at(int(perm[i]), work[i : min(i + group, k)])
            q = quantize_values(work[i].astype(np.float32), s, z)
            codes[perm[i]] = q
            err = (work[i] - dequantize_values(q, s, z)) / u[i, i]
            work[i + 1 : b1] -= np.outer(u[i, i + 1 : b1], err)
            errors[i - b0] = err
        work[b1:] -= u[b0:b1, b1:].T @ errors
    return from_codes(codes.T, params.scales.T, params.zeros.T, k, group, symmetric, scale_dtype)


class _GroupParams:
    """Each group's (scale, zero) [N]: fixed from W up front (static), or computed from the
    updated rows when the group's first row comes up (they see the error fed into them)."""

    def __init__(self, w, group: int, symmetric: bool, clip: bool, hdiag, static: bool, dtype):
        k, n = w.shape
        self.group, self.symmetric, self.clip, self.hdiag = group, symmetric, clip, hdiag
        self.dtype = dtype
        groups = -(-k // group)
        self.scales = np.zeros((groups, n), np.float32)
        self.zeros = np.zeros((groups, n), np.float32)
        self.done = np.zeros(groups, bool)
        if static:
            for g in range(groups):
                self._set(g, w[g * group : (g + 1) * group])

    def _set(self, g: int, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float32)
        if self.clip:
            imp = self.hdiag[g * self.group : g * self.group + len(rows)]
            found = clip_search(rows.T, self.symmetric, imp, self.dtype)
        else:
            found = group_params(rows.T, self.symmetric, self.dtype)
        self.scales[g], self.zeros[g] = found
        self.done[g] = True

    def at(self, row: int, upcoming: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The parameters of original row `row`; `upcoming`: the working rows from it on."""
        g = row // self.group
        if not self.done[g]:  # in order: `row` starts its group, upcoming[:group] is it
            self._set(g, upcoming[: self.group])
        return self.scales[g], self.zeros[g]


def output_error(w: np.ndarray, q: Int4Weight, h: np.ndarray) -> float:
    """trace((W - Q)^T H (W - Q)): the summed squared output error over the calibration rows."""
    d = np.asarray(w, np.float64) - q.effective().astype(np.float64)
    return float(((np.asarray(h, np.float64) @ d) * d).sum())
