"""Sequential refit: each consumer fitted on the inputs the already-pruned model gives it.

The one-shot refit (`fit.refit`) fits consumer W on the dense model's inputs a, as if every
other region were untouched; pruned together, the errors of earlier regions reach later
consumers unanswered. Here the regions are refit in graph order of their consumers, each on
the inputs X_p it sees with every earlier region already pruned and refit, toward the dense
model's outputs X_d W on the same calibration feeds:

    W' = argmin ||X_p[:, K] W' + c - X_d W||^2 + lambda ||W' - W_K||^2

(the unstructured pruner's refit, `prune/sequential.py`, on the kept columns; lambda = `damp`
x the mean diagonal of X_p's covariance, the pull that keeps a few dozen photos from being
fitted exactly; c keeps the output mean). Each consumer so makes up for what earlier regions
changed. One build serves every step: the consumers' weights and output shifts are inputs
(`prune/probe.py`); a pruned region runs as its consumer with zero rows for the dropped
channels and the refit bias as its shift, which computes what the smaller graph computes.
"""

from __future__ import annotations

import numpy as np

from ...progress import Meter
from ..common.layers import Layer, find_layers
from ..int4.hessian import MASK_INPUT, layer_rows
from ..int8.calibrate import tap_module
from ..prune.layers import as_kn, from_kn
from ..prune.probe import WeightProbe
from ..prune.sequential import _dense_taps, _Stats, refit
from .chains import Region


def full_rows(q: Layer, keep: np.ndarray, w_new: np.ndarray) -> np.ndarray:
    """A refit weight [K, N] as the consumer's whole weight, stored layout, zero rows for the
    dropped channels (what the probe runs in place of the smaller graph)."""
    full = np.zeros_like(as_kn(q), np.float32)
    full[keep] = w_new
    return from_kn(q, full)


def probe_for(mod, regions: list[Region], target) -> tuple[WeightProbe, dict[str, int]]:
    """The tapped build with every consumer's weight as an input, and each layer's tap index."""
    tapped, _ = tap_module(mod)
    probe = WeightProbe(tapped, [r.consumer.name for r in regions], target)
    index = {ly.name: i for i, ly in enumerate(find_layers(mod["main"]))}
    return probe, index


def sequential_refit(
    mod, regions: list[Region], feeds, kept: dict, damp: float, target, say, probe=None
) -> dict[str, dict[str, np.ndarray]]:
    """{region: {keep, weight [K, N], bias [N]}}, consumers refit in graph order (module
    docstring); `kept` are the channels each region keeps; `probe`: probe_for's, if built."""
    probe, index = probe or probe_for(mod, regions, target)
    order = sorted(regions, key=lambda r: index[r.consumer.name])
    params = [p.name for p in mod["main"].params]
    wanted = [index[r.consumer.name] for r in order]
    dense = [_dense_taps(probe, feed, params, wanted) for feed in feeds]
    weights, shifts, decision = {}, {}, {}
    meter = Meter(len(order), "prune macs (sequential refit)", say, unit="regions", every=0.5)
    for n, r in enumerate(order):
        q, keep = r.consumer, np.asarray(kept[r.name])
        stats = _Stats()
        for feed, taps in zip(feeds, dense):
            xd = taps[index[q.name]]
            # nothing before the first consumer is pruned: its X_p is X_d
            xp = probe.run([feed[p] for p in params], weights, shifts)[index[q.name]] if n else xd
            mask = feed.get(MASK_INPUT)
            stats.add(layer_rows(q, xp, mask)[:, keep], layer_rows(q, xd, mask))
        w = as_kn(q).astype(np.float64)
        h, c, _ = stats.moments(centered=True)
        w_new = refit(h, c, w, damp, prior=w[keep])
        rows = max(stats.rows, 1)
        bias = stats.sum_d / rows @ w - stats.sum_p / rows @ w_new
        decision[r.name] = {
            "keep": keep.astype(np.int64),
            "weight": w_new.astype(np.float32),
            "bias": bias.astype(np.float32),
        }
        weights[q.name] = full_rows(q, keep, w_new)
        shifts[q.name] = -bias.astype(np.float32)  # the probe subtracts its shift
        meter.update(n + 1, r.name)
    return decision
