"""Accuracy control: per-layer sensitivity and the `--max-drop` search.

Both need the model run with any subset of units (layers, residual joins) int8. Instead of
compiling one model per subset, they run the probe graph (`probe.py`, the same build
calibration used) whose input flags select, unit by unit, the int8 kernels' arithmetic or
fp32: any set of flags computes, bit for bit, what the artifact built with that skip list
computes (`exact.py` gives each unit's kernel constants per set of flags, with the functions
`lower-int8` uses). The search may keep a join fp32 as it keeps a layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm

from ...build import resolve_target
from ..common.budget import fewest_kept, kept_scorer, unit_rows
from ..common.metrics import Metric
from .probe import ProbeRunner, Settings, probe_module

__all__ = ["Sensitivity", "Settings", "analyze"]

# ---- metrics ------------------------------------------------------------------------------


# ---- the search ---------------------------------------------------------------------------


@dataclass
class Sensitivity:
    rows: list[dict]  # per layer: name, what, sqnr_db, cosine (only this layer int8)
    fp32_score: float
    int8_score: float  # every layer int8
    final_score: float  # the chosen layers int8
    metric: str
    skip: list[str]  # layers kept fp32 by --max-drop, most sensitive first
    samples: int
    score_outputs: Callable[[list[np.ndarray]], float] | None = None  # metric vs the fp32 run
    layer_samples: int = 0  # feeds each layer's "alone" row is measured on
    seconds: dict[str, float] | None = None  # build, per-layer rows, budget search

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "samples": self.samples,
            "layer_samples": self.layer_samples or self.samples,
            "seconds": {k: round(v, 2) for k, v in (self.seconds or {}).items()},
            "fp32": round(self.fp32_score, 4),
            "all_int8": round(self.int8_score, 4),
            "final": round(self.final_score, 4),
            "kept_fp32": self.skip,
            "layers": self.rows,
        }


def analyze(
    mod: tvm.IRModule,
    ranges: Mapping[str, dict],
    settings: Settings,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    labels: np.ndarray | None = None,
    max_drop: float | None = None,
    metric: str = "auto",
    target: str = "x86",
    target_options: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    layer_samples: int | None = None,
    probe: ProbeRunner | None = None,
    scales: Mapping[str, np.ndarray] | None = None,
) -> Sensitivity:
    """Per-layer sensitivity on `feeds`; with `max_drop`, the layers to keep fp32.

    layer_samples: measure each layer's "alone" row (the order --max-drop keeps layers fp32
    in) on that many evenly spaced feeds only; the scores (fp32, all int8, each budget step) use
    every feed. One model run per layer and feed is most of the analysis time.
    probe: the probe graph calibration built (else one is built here from `mod`); scales:
    the equalization K per depthwise layer, with `mod` the graph before equalization."""
    say = progress or (lambda _m: None)
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    if probe is None:
        say("sensitivity: building the probe graph")
        made = probe_module(mod, settings, taps=False)
        probe = ProbeRunner(made, resolve_target(target, target_options))
    probe.configure(ranges, scales or {}, settings)
    layers, run = _switch(probe, ranges, settings, feeds, [p.name for p in mod["main"].params])
    n = len(layers)
    seconds["build"] = time.perf_counter() - clock

    clock = time.perf_counter()
    ref = run(np.zeros(n))
    metric = Metric.choose(ref, labels, metric)
    fp32_score = metric.score(ref, ref)
    k = min(layer_samples or len(feeds), len(feeds))
    # evenly spaced feeds: calibration data often comes photo by photo (crops of one photo
    # are alike), so the first k would see few photos
    which = sorted({round(i * (len(feeds) - 1) / max(k - 1, 1)) for i in range(k)})
    rows = unit_rows(layers, run, [ref[i] for i in which], which, say)
    seconds["layers"] = time.perf_counter() - clock
    clock = time.perf_counter()
    on = np.ones(n)
    all_score = metric.score(ref, run(on))
    score, skip = all_score, []

    if max_drop is not None and fp32_score - all_score > max_drop:
        score_kept = kept_scorer(run, n, ref, metric, fp32_score - max_drop, say)
        order = sorted(range(n), key=lambda i: rows[i]["sqnr_db"])
        kept, score = fewest_kept(n, lambda k: score_kept(order[:k]), fp32_score, max_drop)
        skip = [layers[i].name for i in order[:kept]]
    seconds["search"] = time.perf_counter() - clock
    return Sensitivity(
        rows,
        fp32_score,
        all_score,
        score,
        metric.kind,
        skip,
        len(feeds),
        lambda got: metric.score(ref, got),
        len(which),
        seconds,
    )


def _switch(probe: ProbeRunner, ranges, settings: Settings, feeds, params: list[str]):
    """The units the flags address, layers then residual joins (static mode: those
    calibration gave a range; the others stay fp32), and `run(flags, feed indices)` -> the
    first output per feed."""
    units = probe.probe.units
    index = [i for i, u in enumerate(units) if settings.mode == "dynamic" or u.name in ranges]

    def run(flags: np.ndarray, which: Sequence[int] | None = None) -> list[np.ndarray]:
        chosen = feeds if which is None else [feeds[i] for i in which]
        full = np.zeros(probe.n, np.float32)
        full[index] = flags
        return [probe.outputs([feed[p] for p in params], full)[0] for feed in chosen]

    return [units[i] for i in index], run
