"""Range observers on known distributions: clipping methods clip outliers, minmax does not."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.compress.common.errors import CalibrationError
from graphopt.compress.int8.observers import METHODS, Histogram, observe_range


def _hist(*chunks: np.ndarray) -> Histogram:
    h = Histogram()
    for c in chunks:
        h.add(c)
    return h


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> Histogram:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(400_000).astype(np.float32)
    outliers = np.array([60.0, -55.0, 80.0], np.float32)
    # In several chunks, so the histogram has to widen while it fills.
    return _hist(x[:1000] * 0.1, x[1000:], outliers)


def test_minmax_keeps_outliers(gaussian_with_outliers):
    lo, hi = observe_range(gaussian_with_outliers, "minmax")
    assert (lo, hi) == (-55.0, 80.0)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_clipping_methods_clip_outliers(gaussian_with_outliers, method):
    lo, hi = observe_range(gaussian_with_outliers, method)
    # Near the bulk of a unit gaussian (|x| < ~5.5), far below the outliers.
    assert 2.0 < hi < 12.0, (method, hi)
    assert -12.0 < lo < -2.0, (method, lo)


def test_mse_trades_rounding_for_clipping(gaussian_with_outliers):
    # 3 outliers in 400k values: the squared error optimum clips them, but less than the
    # distribution-shape methods (their clipping error is weighed against rounding error).
    lo, hi = observe_range(gaussian_with_outliers, "mse")
    assert 5.0 < hi < 0.75 * 80 and -0.75 * 55 < lo < -3.0, (lo, hi)


@pytest.mark.parametrize("method", METHODS)
def test_uniform_range_is_near_the_max(method):
    x = np.random.default_rng(1).uniform(-3.0, 3.0, 200_000).astype(np.float32)
    lo, hi = observe_range(_hist(x), method)
    assert 2.7 <= hi <= 3.0 and -3.0 <= lo <= -2.7, (method, lo, hi)


@pytest.mark.parametrize("method", METHODS)
def test_non_negative_tensor_keeps_zero_and_sign(method):
    x = np.abs(np.random.default_rng(2).standard_normal(100_000)).astype(np.float32)
    lo, hi = observe_range(_hist(x), method)
    assert lo == 0.0 and 1.5 < hi <= x.max()


def test_histogram_counts_survive_widening():
    h = _hist(np.full(10, 0.5, np.float32), np.full(5, 100.0, np.float32))
    assert h.counts.sum() == h.total == 15
    centers = h.centers()
    assert abs(centers[np.argmax(h.counts)] - 0.5) < 2 * h.width / len(h.counts)


def test_errors():
    with pytest.raises(CalibrationError, match="no calibration values"):
        observe_range(Histogram(), "minmax")
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        observe_range(_hist(np.ones(3, np.float32)), "nope")
    with pytest.raises(CalibrationError, match="non-finite"):
        Histogram().add(np.array([1.0, np.inf], np.float32))


@pytest.mark.parametrize("method", METHODS)
def test_a_spike_at_zero_does_not_collapse_the_range(method):
    # 75% exact zeros (post-relu sparsity) + a unit gaussian: zero is exact in any range, so
    # the range follows the gaussian part (entropy used to collapse to ~0.5 here).
    rng = np.random.default_rng(4)
    x = np.concatenate([np.zeros(150_000), rng.standard_normal(50_000)]).astype(np.float32)
    lo, hi = observe_range(_hist(x), method)
    assert 2.5 < hi <= x.max() and x.min() <= lo < -2.5, (method, lo, hi)
