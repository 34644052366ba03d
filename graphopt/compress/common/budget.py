"""The accuracy-budget search every method shares: how many of the most sensitive units to
keep uncompressed (or less compressed) for a score within `--max-drop` of the original."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .data import Spec, batch_feeds


def fewest_kept(
    n: int, score: Callable[[int], float], fp32_score: float, max_drop: float
) -> tuple[int, float]:
    """The smallest level k in 1..n (k most sensitive units kept) whose score is within
    `max_drop` of fp32, and that score: a bisection over k (about log2(n) model evaluations
    instead of one per level; level n keeps everything and is fp32 itself, so it needs no
    run). The metric is not strictly monotone in k, so this is the boundary bisection finds,
    not always the global minimum; the artifact check still scores what ships."""
    lo, hi, scores = 0, n, {n: fp32_score}  # lo fails (every unit compressed missed), hi passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        scores[mid] = score(mid)
        if fp32_score - scores[mid] <= max_drop:
            hi = mid
        else:
            lo = mid
    return hi, scores[hi]


def eval_feeds(
    eval_data: str | None,
    inputs: Sequence[Spec],
    calib_feeds: list[dict],
    samples: int | None = None,
) -> tuple[list[dict], np.ndarray | None]:
    """Feeds (and labels) for sensitivity and --max-drop: the `--eval` .npz (x, or one array
    per input, and labels y), else the first `samples` calibration feeds."""
    if not eval_data:
        return calib_feeds[:samples], None
    from ...inputs import load_npz

    data: Mapping[str, np.ndarray] = load_npz(eval_data)
    labels = data.pop("y", None)
    if len(inputs) == 1 and inputs[0].name not in data and "x" in data:
        data = {inputs[0].name: data["x"]}
    feeds = batch_feeds(dict(data), inputs)
    if labels is not None:
        batch = inputs[0].shape[0] if inputs[0].shape else 1
        labels = np.asarray(labels).ravel()[: len(feeds) * batch]
    return feeds, labels
