"""SparseGPT: an OBS mask and weight update per layer (Frantar & Alistarh 2023, algorithm 1).

W [K, N] is pruned one input row k at a time, GPTQ's order (`int4/gptq.py`): each removed
weight's error, scaled by the inverse Hessian of the layer's calibration inputs, is fed to the
rows not yet visited, so what is minimized is the output error ||X W - X W'||^2 on the
calibration activations, not the weights' own loss. The mask is chosen by the OBS saliency
w^2 / [H^-1]_kk^2 on the updated weights, per lazy block of `block` rows (SparseGPT's
adaptive mask selection), each block zeroing its share of the layer's level so the level is
exact; N:M groups are chosen when their first row comes up, block patterns score a block by
its summed saliency. H = X^T X is damped by `damp` x its mean diagonal; an input that never
varied (H_kk = 0) gets H_kk = 1 (its weights are then pruned by magnitude).
"""

from __future__ import annotations

import numpy as np

from ..int4.gptq import inverse_cholesky
from .masks import pattern_mask, zero_count
from .spec import PruneSpec


def _units(spec: PruneSpec, rows: int, n: int) -> int:
    """Maskable units in `rows` rows: elements, or blocks (of output and input channels)."""
    if spec.pattern == "block":
        return -(-rows // spec.depth) * -(-n // spec.block)
    return rows * n


def prune_sparsegpt(
    w: np.ndarray, h: np.ndarray, spec: PruneSpec, damp: float = 0.01, block: int = 128
) -> np.ndarray:
    """W [K, N] pruned to `spec` minimizing the output error on inputs whose X^T X is h."""
    k, n = np.shape(w)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    u = inverse_cholesky(h, damp)
    work = np.array(w, np.float64)
    mask = np.zeros((k, n), bool)
    if spec.pattern == "nm":
        block = max(spec.m, block // spec.m * spec.m)  # a lazy block holds whole groups
    total = _units(spec, k, n)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        d2 = np.diag(u)[b0:b1, None] ** 2
        if spec.pattern != "nm":
            count = zero_count(total * b1 // k, spec.sparsity)
            count -= zero_count(total * b0 // k, spec.sparsity)
            mask[b0:b1] = pattern_mask(work[b0:b1] ** 2 / d2, spec, count)
        errors = np.zeros((b1 - b0, n))
        for i in range(b0, b1):
            if spec.pattern == "nm" and i % spec.m == 0:
                j = i - b0
                mask[i : i + spec.m] = pattern_mask(
                    work[i : i + spec.m] ** 2 / d2[j : j + spec.m], spec
                )
            err = np.where(mask[i], work[i], 0.0) / u[i, i]
            work[i] = np.where(mask[i], 0.0, work[i])
            work[i + 1 : b1] -= np.outer(u[i, i + 1 : b1], err)
            errors[i - b0] = err
        work[b1:] -= u[b0:b1, b1:].T @ errors
    return np.where(mask, 0.0, work).astype(np.float32)


def output_error(w: np.ndarray, pruned: np.ndarray, h: np.ndarray) -> float:
    """trace((W - W')^T H (W - W')): the summed squared output error over the rows of h."""
    d = np.asarray(w, np.float64) - np.asarray(pruned, np.float64)
    return float(((np.asarray(h, np.float64) @ d) * d).sum())
