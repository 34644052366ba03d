"""Which hidden channels to drop, and the consumer's weights refit without them.

Per region, from the consumer's inputs a [rows, C] on the calibration data: the mean mu and
the covariance S. Dropping channels D and refitting the consumer W [C, N] by least squares,
    min over W', c of || a W - (a_K W' + c) ||^2      (K = the kept channels)
gives W' = S_KK^-1 S_K: W and c = mu W - mu_K W' (a bias added after the consumer), so the
kept channels take over what the dropped ones explained, means included (GELU and relu6
outputs have nonzero means). The cost of dropping one channel j alone, with that refit, is
the optimal-brain-surgeon score ||W_j||^2 / (S^-1)_jj; scores are made relative to the
region's output energy trace(W^T S W), so regions of different scale compare, and divided by
the multiply-adds a channel costs, so the global choice removes the cheapest error per MAC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RegionStats:
    """Sums over the calibration rows of the consumer's input (float64)."""

    n: int = 0
    sum: np.ndarray | None = None
    gram: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        self.n += rows.shape[0]
        s, g = rows.sum(axis=0), rows.T @ rows
        self.sum = s if self.sum is None else self.sum + s
        self.gram = g if self.gram is None else self.gram + g

    def moments(self, damp: float) -> tuple[np.ndarray, np.ndarray]:
        """(mu [C], covariance S [C, C] + damp x its mean diagonal)."""
        mu = self.sum / max(self.n, 1)
        cov = self.gram / max(self.n, 1) - np.outer(mu, mu)
        cov[np.diag_indices_from(cov)] += damp * max(float(np.mean(np.diag(cov))), 1e-12)
        return mu, cov


def channel_scores(w: np.ndarray, cov: np.ndarray, refit: bool = True) -> np.ndarray:
    """Relative output error of dropping each channel alone, [C]: with the refit, the OBS
    cost ||W_j||^2 / (S^-1)_jj; without, its own output energy S_jj ||W_j||^2."""
    w = np.asarray(w, np.float64)
    per_channel = np.diag(np.linalg.inv(cov)) ** -1 if refit else np.diag(cov)
    energy = max(float(np.sum((cov @ w) * w)), 1e-30)
    return np.sum(w * w, axis=1) * per_channel / energy


def group_scores(w: np.ndarray, cov: np.ndarray, size: int, refit: bool = True) -> np.ndarray:
    """`channel_scores` for groups of `size` channels leaving together (attention heads):
    with the refit, the block OBS cost trace(W_G^T ((S^-1)_GG)^-1 W_G)."""
    w = np.asarray(w, np.float64)
    inv = np.linalg.inv(cov) if refit else None
    energy = max(float(np.sum((cov @ w) * w)), 1e-30)
    out = []
    for g in range(0, len(w), size):
        wg = w[g : g + size]
        block = inv[g : g + size, g : g + size] if refit else None
        m = np.linalg.solve(block, wg) if refit else cov[g : g + size, g : g + size] @ wg
        out.append(float(np.sum(m * wg)))
    return np.array(out) / energy


def refit(w: np.ndarray, mu: np.ndarray, cov: np.ndarray, keep: np.ndarray, pull: float = 0.0):
    """(W' [K, N], c [N]): the consumer's weights over the kept channels and the bias that
    keeps its output mean. `pull` (times S's mean diagonal) adds lambda ||W' - W_K||^2 to the
    least squares: a few dozen photos give a covariance the exact solution overfits, and the
    original weights are the prior worth staying near."""
    w = np.asarray(w, np.float64)
    lam = pull * max(float(np.mean(np.diag(cov))), 1e-12)
    s_kk = cov[np.ix_(keep, keep)] + lam * np.eye(len(keep))
    w_new = np.linalg.solve(s_kk, cov[keep] @ w + lam * w[keep])
    c = mu @ w - mu[keep] @ w_new
    return w_new.astype(np.float32), c.astype(np.float32)


def choose_kept(
    scores: dict[str, np.ndarray],
    macs: dict[str, float],
    target: float,
    multiple: int | dict[str, int] = 8,
    min_keep: float = 0.1,
) -> dict[str, np.ndarray]:
    """Kept unit indices per region (channels, or heads) so the regions' multiply-adds drop
    to `target` of theirs: units leave in order of score per MAC, each region keeping at
    least `min_keep` of its units and a multiple of `multiple` (SIMD-friendly widths; one per
    region when a dict). Rounding up gives units back, so the greedy pass is repeated with
    the shortfall added until the target is met (the result is at or just below it)."""
    total = sum(macs[r] * len(s) for r, s in scores.items())
    budget = total * (1.0 - target)  # multiply-adds to remove
    order = sorted(
        ((float(s[j]) / macs[r], r, j) for r, s in scores.items() for j in range(len(s))),
    )
    step = multiple if isinstance(multiple, dict) else dict.fromkeys(scores, multiple)
    goal = budget
    for _ in range(16):
        dropped = _greedy(order, scores, macs, goal, min_keep)
        kept = {r: _kept(scores[r], dropped[r], step[r]) for r in scores}
        removed = sum(macs[r] * (len(s) - len(kept[r])) for r, s in scores.items())
        if removed >= budget * (1 - 1e-9):
            break
        goal += budget - removed
    return kept


def _greedy(order, scores, macs, budget: float, min_keep: float) -> dict[str, list[int]]:
    """Units dropped in `order` (cheapest error per MAC first) until `budget` MACs are gone."""
    dropped = {r: [] for r in scores}
    removed = 0.0
    for _cost, r, j in order:
        if removed >= budget:
            break
        c = len(scores[r])
        if c - len(dropped[r]) - 1 < max(min_keep * c, 1):
            continue
        dropped[r].append(j)
        removed += macs[r]
    return dropped


def _kept(score: np.ndarray, dropped: list[int], multiple: int) -> np.ndarray:
    """The channels not dropped, rounded up to a multiple of `multiple` (the best-scored
    dropped ones come back), in channel order."""
    c = len(score)
    keep = c - len(dropped)
    if keep >= c:
        return np.arange(c)
    want = min(c, -(-keep // multiple) * multiple)
    order = np.argsort(-score, kind="stable")  # most important first
    return np.sort(order[:want])
