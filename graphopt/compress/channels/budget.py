"""`--prune macs=X --max-drop D`: the fewest multiply-adds within the accuracy budget.

The channels' order is the method's own (OBS cost per multiply-add across every region, so
each region's share follows its measured sensitivity); what the budget chooses is how far
down that order to go. The levels run from X to 1 in steps of STEP of the multiply-adds;
each is planned as compile plans it (the sequential refit, or the one-shot one when the
calibration rows are few; no distillation) and scored through one build with the
consumers' weights as inputs (`sequential.probe_for`), on the --eval data (else the
calibration data), by the
search int8 and unstructured pruning use (`common/budget.py`): X itself first, then a
bisection. The chosen level is then planned as without the budget (distillation
included), and the built artifact is scored: while it misses, compile takes the next level
up (`CompressionPlan.tighten`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import CompressionPlan
from ..common.budget import fewest_kept
from ..common.layers import find_layers
from .distill import probe_inputs
from .sequential import probe_for

STEP = 0.025  # MAC levels the search tries: X, X + ~STEP, ..., 1


def macs_levels(floor: float) -> list[float]:
    """floor, ..., 1.0 in about STEP steps (the last level is the unpruned model)."""
    n = max(1, math.ceil((1.0 - floor) / STEP - 1e-9))
    return [round(floor + (1.0 - floor) * k / n, 4) for k in range(n + 1)]


@dataclass
class MacsSearch:
    levels: list[float]
    dense: float  # the unpruned model's score
    max_drop: float
    scores: dict[float, float] = field(default_factory=dict)  # level -> its plan's score
    chosen: float | None = None

    def record(self) -> dict:
        return {
            "dense": round(self.dense, 4),
            "levels": {f"{m:g}": round(v, 4) for m, v in sorted(self.scores.items())},
            "chosen": self.chosen,
        }

    def attach(self, plan: CompressionPlan, macs: float, plan_at) -> None:
        """The budget on `plan` (the level `macs`), and the next level up as its tighter plan."""
        plan.manifest["budget"] = {**self.record(), "max_drop": self.max_drop}
        plan.budget = self.dense - self.max_drop
        higher = [m for m in self.levels if m > macs + 1e-9 and m < 1.0]
        if higher:
            plan.tighten = lambda: plan_at(higher[0])


def search_macs(job) -> MacsSearch:
    """The lowest MAC level whose plan scores within --max-drop (module docstring)."""
    from .method import decide, output_count, region_budget

    o, say = job.o, job.ctx.progress
    levels = macs_levels(o.macs)
    metric = job.metric
    search = MacsSearch(levels, metric.score(job.ref, job.ref), o.max_drop)
    say(f"prune macs: --max-drop {o.max_drop:g}: scoring MAC levels {o.macs:g}x..1x")
    probe = probe_for(job.mod, job.regions, job.run_target)
    layers = {ly.name: ly for ly in find_layers(job.mod["main"])}
    params = [p.name for p in job.mod["main"].params]
    arrays = [[feed[p] for p in params] for feed in job.scored]
    n_out = output_count(job.mod)

    def score(k: int) -> float:
        if k == len(levels) - 1:
            return search.dense
        func = job.mod["main"]
        sizes = job.ctx.sizes
        _, per_channel, target = region_budget(func, job.regions, levels[k], o.min_keep, sizes)
        decision = job.refit(decide(job.regions, job.stats, per_channel, target, o), probe)
        job.refitted[levels[k]] = decision
        weights, shifts = probe_inputs(job.regions, decision, layers)
        got = [np.asarray(probe.runner.run(a, weights, shifts)[-n_out]) for a in arrays]
        search.scores[levels[k]] = metric.score(job.ref, got)
        say(f"prune macs: {levels[k]:g}x of the multiply-adds -> {search.scores[levels[k]]:.2f}")
        return search.scores[levels[k]]

    n = len(levels) - 1
    if search.dense - score(0) <= o.max_drop:
        search.chosen = levels[0]
    else:
        k, _final = fewest_kept(n, score, search.dense, o.max_drop)
        search.chosen = levels[k] if k < n else None
    return search
