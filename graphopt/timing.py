"""Side-by-side latency: interleaved runs in one process, medians and ratios.

Interleaving (A, B, B, A, A, B, ...) spreads machine noise over every contestant, which matters
on shared 2-core machines; we report medians, never a single run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p10_ms(self) -> float:
        return _quantile(self.samples_ms, 0.1)

    @property
    def p90_ms(self) -> float:
        return _quantile(self.samples_ms, 0.9)

    def to_json(self) -> dict[str, Any]:
        return {
            "median_ms": round(self.median_ms, 4),
            "p10_ms": round(self.p10_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "runs": len(self.samples_ms),
        }


def _quantile(values: tuple[float, ...], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(
    contestants: Mapping[str, Callable[[], Any]],
    runs: int = 50,
    warmup: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Timing]:
    """Time each callable `runs` times, alternating the order every round, after warm-up."""
    names = list(contestants)
    for _ in range(warmup):
        for name in names:
            contestants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            contestants[name]()
            samples[name].append((time.perf_counter() - start) * 1000.0)
        if progress is not None:
            progress(i + 1, runs)
    return {n: Timing(tuple(s)) for n, s in samples.items()}
