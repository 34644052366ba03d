"""`--prune ... --max-drop X`: per-layer sparsity under an accuracy budget.

Every layer is first pruned to the spec's level; each one alone is then scored against the
dense model (SQNR of the outputs on the --eval data, else the calibration data), and the search
of `common/budget.py` (the one int8 uses) finds the fewest most sensitive layers to leave dense
so the metric stays within X points of the dense model. All of it runs through one build with
the weights as inputs (`probe.py`); the built artifact is then scored too, and while it misses,
compile leaves the next most sensitive layer dense and rebuilds (`CompressionPlan.tighten`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import CompressionContext, CompressionPlan
from ..common.budget import eval_feeds, fewest_kept, kept_scorer, unit_rows
from ..common.metrics import Metric
from .probe import WeightProbe

if TYPE_CHECKING:
    from .method import Pruned, PruneOptions

LAYER_SAMPLES = 16  # feeds each layer's "alone" row is measured on (evenly spaced)


def budget_order(mod, pruned: Pruned, o: PruneOptions, ctx: CompressionContext, calib) -> None:
    """Fill pruned.order (most sensitive first), pruned.kept and pruned.budget."""
    from ..int8.flow import evaluation_target

    feeds, labels = eval_feeds(o.eval_data, ctx.inputs, calib or [])
    names = list(pruned.weights)
    layers = [ly for ly in pruned.layers if ly.name in pruned.weights]
    ctx.progress("prune: building the model with its weights as inputs (sensitivity)")
    probe = WeightProbe(mod, names, evaluation_target(ctx.target))
    params = [p.name for p in mod["main"].params]

    def run(flags, which=None) -> list[np.ndarray]:
        on = [n for n, f in zip(names, flags) if f]
        w = {n: pruned.weights[n] for n in on}
        c = {n: pruned.corrections[n] for n in on if n in pruned.corrections}
        chosen = feeds if which is None else [feeds[i] for i in which]
        return [probe.run([f[p] for p in params], w, c)[0] for f in chosen]

    ref = run(np.zeros(len(names)))
    metric = Metric.choose(ref, labels, o.metric)
    dense = metric.score(ref, ref)
    k = min(LAYER_SAMPLES, len(feeds))
    which = sorted({round(i * (len(feeds) - 1) / max(k - 1, 1)) for i in range(k)})
    rows = unit_rows(layers, run, [ref[i] for i in which], which, ctx.progress, "prune sensitivity")
    order = sorted(range(len(names)), key=lambda i: rows[i]["sqnr_db"])
    all_pruned = metric.score(ref, run(np.ones(len(names))))
    kept, final = 0, all_pruned
    if dense - all_pruned > o.max_drop:
        score = kept_scorer(run, len(names), ref, metric, dense - o.max_drop, ctx.progress, "dense")
        kept, final = fewest_kept(len(names), lambda j: score(order[:j]), dense, o.max_drop)
    pruned.order = [names[i] for i in order]
    pruned.kept = pruned.order[:kept]
    pruned.budget = {
        "metric": metric.kind,
        "samples": len(feeds),
        "dense": round(dense, 4),
        "all_pruned": round(all_pruned, 4),
        "final": round(final, 4),
        "max_drop": o.max_drop,
        "sensitivity": rows,
        "score": lambda got: metric.score(ref, got),
        "feeds": [[f[p] for p in params] for f in feeds],
    }


def attach_budget(plan: CompressionPlan, pruned: Pruned, kept: list[str]) -> None:
    """The artifact check, the budget and the next tighter plan (one more layer dense)."""
    b = pruned.budget
    plan.manifest["accuracy"] = {
        k: b[k] for k in ("metric", "samples", "dense", "all_pruned", "final", "max_drop")
    }
    plan.manifest["sensitivity"] = b["sensitivity"]
    plan.budget = b["dense"] - b["max_drop"]
    plan.check = lambda run: b["score"]([run(arrays)[0] for arrays in b["feeds"]])
    rest = [n for n in pruned.order if n not in kept]
    if rest:
        plan.tighten = lambda: pruned.plan([*kept, rest[0]])
