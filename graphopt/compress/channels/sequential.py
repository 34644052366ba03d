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
changed. When the consumer's output joins a residual add y + r (through its bias), the target
is X_d W + (r_d - r_p): the error the skip path carries from earlier blocks is made up too, so
the block's sum, not only its branch, follows the dense model (`residual=True`, the default).
One build serves every step: the consumers' weights and output shifts are inputs
(`prune/probe.py`); a pruned region runs as its consumer with zero rows for the dropped
channels and the refit bias as its shift, which computes what the smaller graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ...progress import Meter
from ..common.layers import Layer, bound_constants, find_joins, find_layers
from ..int4.hessian import MASK_INPUT, layer_rows
from ..int8.calibrate import tap_module
from ..prune.layers import as_kn, from_kn
from ..prune.probe import WeightProbe
from ..prune.sequential import _dense_taps, _Stats, refit
from .chains import Region, taps, window_rows


def full_rows(q: Layer, keep: np.ndarray, w_new: np.ndarray) -> np.ndarray:
    """A refit weight [K, N] (the kept channels' rows) as the consumer's whole weight, stored
    layout, zero rows for the dropped channels (what the probe runs in place of the smaller
    graph)."""
    full = np.zeros_like(as_kn(q), np.float32)
    full[window_rows(keep, taps(q))] = w_new
    return from_kn(q, full)


def residual_of(func, var, consts: dict):
    """The other operand of the residual add reading `var` (through a bias add), or None."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    cur = var
    for _ in range(2):
        readers = [b for b in bindings if cur in relax.analysis.free_vars(b.value)]
        if len(readers) != 1:
            return None
        b = readers[0]
        v = b.value
        if not (isinstance(v, relax.Call) and v.op.name == "relax.add" and len(v.args) == 2):
            return None
        other = v.args[1] if v.args[0].same_as(cur) else v.args[0]
        if isinstance(consts.get(other, other), tvm.ir.GenericConst):
            cur = b.var  # the bias
            continue
        same = isinstance(other, relax.Var) and _dims(other) == _dims(b.var)
        return other if same else None
    return None


def _dims(expr) -> list[int | str] | None:
    """A tensor's dims: sizes, and symbolic ones by name."""
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None:
        return None
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else str(d) for d in values]


@dataclass
class Probe:
    """The tapped build with every consumer's weight as an input; each layer's tap index and
    the tap index of each consumer's residual operand (when its output joins one)."""

    runner: WeightProbe
    index: dict[str, int]
    residual: dict[str, int]


def probe_for(mod, regions: list[Region], target, more=()) -> Probe:
    """The probe of the regions' consumers (and of the layers named in `more`)."""
    consumers = [r.consumer.name for r in regions]
    found: list[str] = []
    base = {}

    def residuals(func) -> list:
        layers = {ly.name: ly for ly in find_layers(func)}
        base["n"] = len(layers) + 3 * len(find_joins(func))
        consts = bound_constants(func)
        out = []
        for name in consumers:
            res = residual_of(func, layers[name].var, consts)
            if res is not None:
                found.append(name)
                out.append(res)
        return out

    tapped, _ = tap_module(mod, extra=residuals)
    runner = WeightProbe(tapped, [*consumers, *more], target)
    index = {ly.name: i for i, ly in enumerate(find_layers(mod["main"]))}
    return Probe(runner, index, {n: base["n"] + i for i, n in enumerate(found)})


def sequential_refit(
    mod,
    regions: list[Region],
    feeds,
    kept: dict,
    damp: float,
    target,
    say,
    probe=None,
    residual: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """{region: {keep, weight [K, N], bias [N]}}, consumers refit in graph order (module
    docstring); `kept` are the channels each region keeps; `probe`: probe_for's, if built;
    residual: the target also makes up for the residual operand's error (r_d - r_p)."""
    probe = probe or probe_for(mod, regions, target)
    index, res = probe.index, probe.residual if residual else {}
    order = sorted(regions, key=lambda r: index[r.consumer.name])
    params = [p.name for p in mod["main"].params]
    wanted = [index[r.consumer.name] for r in order] + list(res.values())
    dense = [_dense_taps(probe.runner, feed, params, wanted) for feed in feeds]
    weights, shifts, decision = {}, {}, {}
    meter = Meter(len(order), "prune macs (sequential refit)", say, unit="regions", every=0.5)
    for n, r in enumerate(order):
        q, keep = r.consumer, np.asarray(kept[r.name])
        fit = _Fit(q, window_rows(keep, taps(q)), res.get(q.name))
        for feed, tapped in zip(feeds, dense):
            # nothing before the first consumer is pruned: its inputs are the dense ones
            out = probe.runner.run([feed[p] for p in params], weights, shifts) if n else tapped
            fit.add(out, tapped, index[q.name], feed.get(MASK_INPUT))
        w_new, bias = fit.solve(damp)
        decision[r.name] = {"keep": keep.astype(np.int64), "weight": w_new, "bias": bias}
        weights[q.name] = full_rows(q, keep, w_new)
        shifts[q.name] = -bias  # the probe subtracts its shift
        meter.update(n + 1, r.name)
    return decision


def output_rows(q: Layer, y: np.ndarray, mask) -> np.ndarray:
    """A tensor shaped like the consumer's output as rows [-1, N], in the order of the rows
    of its input (`layer_rows`): a conv's output pixels, channels last."""
    y = np.asarray(y, np.float64)
    if q.kind == "conv2d":
        return y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])
    return layer_rows(q, y, mask)


class _Fit:
    """One consumer's least squares: X_p[:, K] W' + c toward X_d W (+ r_d - r_p); `keep`: the
    weight rows of the kept channels."""

    def __init__(self, q: Layer, keep: np.ndarray, residual: int | None) -> None:
        self.q, self.keep, self.residual = q, keep, residual
        self.stats = _Stats()
        self.cross, self.sum_e = 0.0, 0.0  # X_p^T e, sum of e = r_d - r_p

    def add(self, out, dense, i: int, mask) -> None:
        xp = layer_rows(self.q, out[i], mask)[:, self.keep]
        self.stats.add(xp, layer_rows(self.q, dense[i], mask))
        if self.residual is not None:
            e = output_rows(self.q, dense[self.residual] - out[self.residual], mask)
            self.cross = self.cross + xp.T @ e
            self.sum_e = self.sum_e + e.sum(0)

    def solve(self, damp: float) -> tuple[np.ndarray, np.ndarray]:
        s = self.stats
        w = as_kn(self.q).astype(np.float64)
        h, c, _ = s.moments(centered=True)
        rows = max(s.rows, 1)
        mean_p, mean_d, mean_e = s.sum_p / rows, s.sum_d / rows, self.sum_e / rows
        w_new = refit(h, c, w, damp, prior=w[self.keep])
        if self.residual is not None:  # the residual error as an extra target, centered
            extra = self.cross / rows - np.outer(mean_p, mean_e)
            lam = damp * float(np.mean(np.diag(h))) + 1e-12  # refit's
            w_new = w_new + np.linalg.solve(h + lam * np.eye(len(h)), extra)
        bias = mean_d @ w + mean_e - mean_p @ w_new
        return w_new.astype(np.float32), bias.astype(np.float32)
