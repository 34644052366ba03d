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
    settle: int = 0,
) -> dict[str, Timing]:
    """Time each callable `runs` times, alternating the order every round, after warm-up.

    `settle`: untimed runs of a contestant right before each of its timed runs, so every timed
    run follows a run of its own, not whichever contestant came before. Without them the
    order decides: onnxruntime's threads spin on after its calls return, and MobileNetV2's
    first graphopt kernel took 204 us right after an onnxruntime run, 40 us after its own;
    with three contestants alternating (A B C C B A ..), C never follows A.
    """
    names = list(contestants)
    for _ in range(warmup):
        for name in names:
            contestants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            for _ in range(settle):
                contestants[name]()
            start = time.perf_counter()
            contestants[name]()
            samples[name].append((time.perf_counter() - start) * 1000.0)
        if progress is not None:
            progress(i + 1, runs)
    return {n: Timing(tuple(s)) for n, s in samples.items()}
