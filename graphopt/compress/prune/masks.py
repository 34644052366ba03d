"""Magnitude pruning of W [K, N] in each pattern (the baseline SparseGPT is measured against),
and the pattern arithmetic both share: how many units a level zeroes, and units' scores."""

from __future__ import annotations

import numpy as np

from .spec import PruneSpec


def zero_count(units: int, sparsity: float) -> int:
    """How many of `units` a level zeroes (the same rounding everywhere, so levels are exact)."""
    return int(round(sparsity * units))


def block_scores(values: np.ndarray, block: int, depth: int = 1) -> np.ndarray:
    """[R, N] -> [ceil(R / depth), ceil(N / block)]: the sum of each block's values (short
    last blocks)."""
    r, n = values.shape
    padded = np.zeros((r + -r % depth, n + -n % block), values.dtype)
    padded[:r, :n] = values
    return padded.reshape(padded.shape[0] // depth, depth, -1, block).sum(axis=(1, 3))


def expand_blocks(mask: np.ndarray, block: int, shape: tuple, depth: int = 1) -> np.ndarray:
    """Block mask [ceil(R / depth), ceil(N / block)] -> element mask of `shape` [R, N]."""
    r, n = shape
    return np.repeat(np.repeat(mask, block, axis=1), depth, axis=0)[:r, :n]


def smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the `count` smallest scores (ties: lowest flat index first)."""
    mask = np.zeros(scores.size, bool)
    mask[np.argsort(scores, axis=None, kind="stable")[:count]] = True
    return mask.reshape(scores.shape)


def nm_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """[K, N] scores, K a multiple of m: in each group of m rows, per column, the n smallest."""
    k, cols = scores.shape
    groups = scores.reshape(k // m, m, cols)
    order = np.argsort(groups, axis=1, kind="stable")
    mask = np.zeros_like(groups, bool)
    np.put_along_axis(mask, order[:, :n], True, axis=1)
    return mask.reshape(k, cols)


def pattern_mask(scores: np.ndarray, spec: PruneSpec, count: int | None = None) -> np.ndarray:
    """Element mask (True: zero) of [R, N] importance scores under `spec`; `count` overrides
    how many units (elements or blocks) are zeroed."""
    if spec.pattern == "nm":
        return nm_mask(scores, spec.n, spec.m)
    if spec.pattern == "block":
        blocks = block_scores(scores, spec.block, spec.depth)
        n = zero_count(blocks.size, spec.sparsity) if count is None else count
        return expand_blocks(smallest(blocks, n), spec.block, scores.shape, spec.depth)
    n = zero_count(scores.size, spec.sparsity) if count is None else count
    return smallest(scores, n)


def magnitude(w: np.ndarray, spec: PruneSpec) -> np.ndarray:
    """W [K, N] with the smallest weights (squared magnitude; a block: its summed squares)
    zeroed to `spec`'s level."""
    w = np.asarray(w, np.float32)
    return np.where(pattern_mask(w.astype(np.float64) ** 2, spec), 0.0, w).astype(np.float32)


def fits(spec: PruneSpec, k: int, n: int) -> str | None:
    """Why a [K, N] weight cannot take `spec` (None: it can)."""
    if spec.pattern == "nm" and k % spec.m:
        return f"{k} inputs are no multiple of {spec.m}"
    return None
