"""The accuracy-budget search every compression method shares (`--max-drop`).

A method provides `run(flags, feed indices) -> first output per feed`, flags[i] = 1 for unit i
compressed (a layer quantized, a layer pruned) and 0 for it left as it was; these functions
measure each unit alone and find the fewest most sensitive units to leave uncompressed so the
metric stays within the budget (int8: `int8/sensitivity.py`; pruning: `prune/budget.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...progress import Meter
from .metrics import Metric, cosines, sqnr_db


def kept_scorer(run, n: int, ref: list, metric: Metric, budget: float, say, kept="fp32"):
    """score(units kept uncompressed) -> the metric with those units as they were and every
    other compressed, or, once the best score still reachable misses `budget`, that bound
    (scoring stops there). kept: what the progress lines call an uncompressed unit."""

    def score(fp32_units: list[int]) -> float:
        flags = np.ones(n)
        flags[fp32_units] = 0
        got: list[np.ndarray] = []
        for i in range(len(ref)):
            got += run(flags, [i])
            if metric.bound(ref, got) < budget - 1e-9:
                say(f"max-drop: {len(fp32_units)} kept {kept} -> misses after {i + 1} feed(s)")
                return metric.bound(ref, got)
        got_score = metric.score(ref, got)
        say(f"max-drop: {len(fp32_units)} most sensitive unit(s) kept {kept} -> {got_score:.2f}")
        return got_score

    return score


def unit_rows(layers, run, ref_k, which, say, what: str = "sensitivity") -> list[dict]:
    """Each unit alone compressed (every other as it was): its SQNR and mean cosine against
    the original on the chosen feeds, the order --max-drop keeps units uncompressed in."""
    n, rows = len(layers), []
    meter = Meter(n, what, say, unit="layers", every=0.5)
    for i, layer in enumerate(layers):
        flags = np.zeros(n)
        flags[i] = 1
        got = run(flags, which)
        rows.append(
            {
                "layer": layer.name,
                "what": layer.describe(),
                "sqnr_db": round(sqnr_db(np.concatenate(ref_k), np.concatenate(got)), 2),
                "cosine": round(float(cosines(ref_k, got).mean()), 6),
            }
        )
        meter.update(i + 1, f"{layer.name} SQNR {rows[-1]['sqnr_db']} dB")
    return rows


def fewest_kept(
    n: int, score: Callable[[int], float], fp32_score: float, max_drop: float
) -> tuple[int, float]:
    """The fewest most-sensitive layers to keep fp32 (k in 1..n) for a score within
    `max_drop` of fp32, and that score: a bisection over k (about log2(n) model evaluations
    instead of one per kept layer; keeping all n is fp32 itself and needs no run). The metric
    is not strictly monotone in k, so this is the boundary bisection finds, not always the
    global minimum; the artifact check still scores what ships."""
    lo, hi, scores = 0, n, {n: fp32_score}  # lo fails (all int8 missed), hi passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        scores[mid] = score(mid)
        if fp32_score - scores[mid] <= max_drop:
            hi = mid
        else:
            lo = mid
    return hi, scores[hi]
