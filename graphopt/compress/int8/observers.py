"""Activation range observers: minmax, percentile, entropy (KL) and mse.

Every observer sees the same statistics, a `Histogram` of the tensor's values over all
calibration samples (plus the exact min and max), so one calibration run serves every method
and memory stays bounded (a fixed number of bins per tensor, whatever the number of samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..common.errors import CalibrationError

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 4096  # over [-width, width]; must be even so that doubling the width merges pairs


@dataclass
class Histogram:
    """Counts of values over [-width, width] in `BINS` equal bins; the width doubles as needed.

    Symmetric around zero with an even bin count, so widening by 2x merges adjacent pairs and
    pads zeros on both ends: no re-binning error accumulates.
    """

    width: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    lo: float = np.inf
    hi: float = -np.inf
    total: int = 0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float32).ravel()
        if v.size == 0:
            return
        lo, hi = float(v.min()), float(v.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):  # min/max carry any inf or nan
            raise CalibrationError("calibration produced non-finite activations (inf or nan)")
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        need = max(abs(self.lo), abs(self.hi))
        if self.width == 0.0:
            self.width = need if need > 0 else 1e-8
        while need > self.width:
            self._double()
        # bin = floor((v + width) / (2 width) * BINS), in place in float32: every value is in
        # [-width, width], so the only bin past the end is v == width's
        t = v * np.float32(BINS / (2 * self.width))
        t += np.float32(BINS / 2)
        idx = t.astype(np.intp)
        np.minimum(idx, BINS - 1, out=idx)
        self.counts += np.bincount(idx, minlength=BINS)
        self.total += v.size

    def _double(self) -> None:
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        pad = BINS // 4
        self.counts = np.concatenate([np.zeros(pad, np.int64), merged, np.zeros(pad, np.int64)])
        self.width *= 2

    def edges(self) -> np.ndarray:
        return np.linspace(-self.width, self.width, BINS + 1)

    def centers(self) -> np.ndarray:
        e = self.edges()
        return (e[:-1] + e[1:]) / 2


def observe_range(
    hist: Histogram, method: str, levels: int = 256, percentile: float = 99.99
) -> tuple[float, float]:
    """The (lo, hi) range to quantize to, always containing 0 (so zero padding stays exact)."""
    if hist.total == 0:
        raise CalibrationError("no calibration values were observed for a tensor")
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method '{method}' (use {', '.join(METHODS)})")
    lo, hi = min(hist.lo, 0.0), max(hist.hi, 0.0)
    if method == "percentile":
        lo, hi = _percentile(hist, percentile)
    elif method == "entropy":
        # All levels sit on one side for a non-negative tensor (post-relu), half otherwise.
        t = _entropy_threshold(hist, levels if hist.lo >= 0 else levels // 2)
        lo, hi = max(lo, -t), min(hi, t)
    elif method == "mse":
        lo, hi = _mse_range(hist, lo, hi, levels)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        hi = lo + 1e-8
    return float(lo), float(hi)


def _percentile(hist: Histogram, pct: float) -> tuple[float, float]:
    cdf = np.cumsum(hist.counts) / hist.total
    edges = hist.edges()
    tail = (100.0 - pct) / 100.0
    lo_i = int(np.searchsorted(cdf, tail, side="left"))
    hi_i = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    lo = max(hist.lo, float(edges[lo_i]))
    hi = min(hist.hi, float(edges[min(hi_i + 1, BINS)]))
    return lo, hi


def _abs_histogram(hist: Histogram) -> np.ndarray:
    """Counts of |x| over [0, width] in BINS/2 bins (the two halves folded)."""
    half = BINS // 2
    return hist.counts[half:] + hist.counts[:half][::-1]


def _entropy_threshold(hist: Histogram, levels: int) -> float:
    """TensorRT's KL calibration: the clip threshold whose `levels`-bin quantized histogram
    diverges least (KL) from the reference histogram with the clipped outliers folded in."""
    counts = _abs_histogram(hist).astype(np.float64)
    # Zero is exact in every range (the zero point), so the zero bin carries no divergence;
    # left in, a post-relu spike at 0 drags the threshold down (merging it smears the spike).
    counts[0] = 0
    if not counts.any():
        return hist.width
    nbins = counts.size
    target = max(levels, 2)
    last = int(np.nonzero(counts)[0][-1]) + 1
    if last <= target:
        return (last / nbins) * hist.width
    best_i, best_kl = last, np.inf
    # Candidate thresholds in steps that keep the search cheap (at most ~256 candidates).
    step = max(1, (last - target) // 256)
    for i in range(target, last + 1, step):
        ref = counts[:i].copy()
        ref[-1] += counts[i:].sum()
        # Quantize counts[:i] into `target` levels, then expand back over the non-empty bins.
        src = counts[:i]
        starts = np.linspace(0, i, target + 1).astype(np.int64)[:-1]
        group = np.searchsorted(starts, np.arange(i), side="right") - 1
        nonzero = src != 0
        sums = np.add.reduceat(src, starts)
        n = np.add.reduceat(nonzero.astype(np.float64), starts)
        q = np.where(nonzero, (sums / np.maximum(n, 1))[group], 0.0)
        kl = _kl(ref, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i / nbins) * hist.width


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    qs = q.sum()
    if qs == 0:
        return np.inf
    q = q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        # Bins that quantization emptied; smooth instead of an infinite divergence.
        q = np.where(mask & (q == 0), 1e-12, q)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _mse_range(hist: Histogram, lo: float, hi: float, levels: int) -> tuple[float, float]:
    """Shrink [lo, hi] by a common factor to minimize the expected squared quantization error
    (rounding error inside the range, clipping error outside) over the histogram."""
    x = hist.centers()
    w = hist.counts.astype(np.float64)
    nz = w > 0
    x, w = x[nz], w[nz]
    best, best_err = 1.0, np.inf
    for a in np.linspace(0.05, 1.0, 96):
        a_lo, a_hi = lo * a, hi * a
        scale = (a_hi - a_lo) / (levels - 1)
        if scale <= 0:
            continue
        zp = np.round(-a_lo / scale)
        q = np.clip(np.round(x / scale) + zp, 0, levels - 1)
        err = float(np.sum(w * (x - (q - zp) * scale) ** 2))
        if err < best_err:
            best_err, best = err, a
    return lo * best, hi * best
