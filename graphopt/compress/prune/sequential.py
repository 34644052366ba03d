"""Sequential SparseGPT with a refit toward the dense model's outputs.

Layer by layer in graph order, each layer sees the inputs X_p the model computes with every
earlier layer already pruned, and is fitted to the dense model's output X_d W on the same
calibration feeds, not to X_p W: errors of earlier layers are compensated where they can be.
With H = X_p^T X_p and C = X_p^T X_d (per calibration row),

    ||X_d W - X_p W'||^2 = ||X_d W - X_p W*||^2 + ||X_p (W* - W')||^2,
    W* = (H + pull I)^-1 (C W + pull W)

(exact for pull = 0): the refit W* is the least-squares weight toward the dense outputs, with
a pull toward the original weights (`pull` x H's mean diagonal) so few calibration rows do not
fit noise; SparseGPT then prunes W* against H. The bias correction subtracts the mean output
difference E[X_p W'] - E[X_d W] per channel, propagated errors included; with it, H and C are
taken of the centered rows (the intercept is the bias's job, the weights fit what varies).

Both X_p and X_d come from one build (`probe.py` over the tapped graph): the weights are inputs,
so the model with the first l layers pruned is one more run, not one more compile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...progress import Meter
from ..common.layers import Layer, find_layers
from ..int4.hessian import MASK_INPUT, layer_rows
from ..int8.calibrate import tap_module
from .layers import as_kn, from_kn
from .masks import magnitude
from .probe import WeightProbe
from .sparsegpt import prune_sparsegpt
from .spec import PruneSpec


@dataclass
class _Stats:
    """A layer's statistics over the calibration rows, pruned (p) and dense (d) inputs."""

    h: np.ndarray = 0.0  # X_p^T X_p
    c: np.ndarray = 0.0  # X_p^T X_d
    hd: np.ndarray = 0.0  # X_d^T X_d
    sum_p: np.ndarray = 0.0
    sum_d: np.ndarray = 0.0
    rows: int = 0

    def moments(self, centered: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(H, C, H_d) per row; centered: of the rows minus their means (the bias correction
        then carries the mean, so the weights fit only what varies)."""
        rows = max(self.rows, 1)
        h, c, hd = self.h / rows, self.c / rows, self.hd / rows
        if centered:
            mp, md = self.sum_p / rows, self.sum_d / rows
            h, c, hd = h - np.outer(mp, mp), c - np.outer(mp, md), hd - np.outer(md, md)
        return h, c, hd

    def add(self, xp: np.ndarray, xd: np.ndarray) -> None:
        self.h = self.h + xp.T @ xp
        self.c = self.c + xp.T @ xd
        self.hd = self.hd + xd.T @ xd
        self.sum_p, self.sum_d = self.sum_p + xp.sum(0), self.sum_d + xd.sum(0)
        self.rows += len(xp)


@dataclass
class SequentialResult:
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # stored layout
    corrections: dict[str, np.ndarray] = field(default_factory=dict)
    # (magnitude, sparsegpt): ||X_d W - X_p W'||^2 / ||X_d W||^2, W' by magnitude / by this
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)


def _dense_taps(probe: WeightProbe, feed, params, wanted) -> dict[int, np.ndarray]:
    """The dense model's inputs of the wanted layers on one feed (kept: every layer's pass
    needs them, and running the dense model once per feed halves the runs)."""
    taps = probe.run([feed[p] for p in params], {})
    return {i: taps[i] for i in wanted}


def dense_error(h, c, hd, w: np.ndarray, new: np.ndarray) -> float:
    """||X_d W - X_p W'||^2 relative to ||X_d W||^2, from the moments."""
    energy = float(np.sum((hd @ w) * w))
    err = energy - 2 * float(np.sum((c @ w) * new)) + float(np.sum((h @ new) * new))
    return max(err, 0.0) / max(energy, 1e-30)


def refit(
    h: np.ndarray, c: np.ndarray, w: np.ndarray, pull: float, prior: np.ndarray | None = None
) -> np.ndarray:
    """W* = (H + pull I)^-1 (C W + pull W0), pull relative to H's mean diagonal; W0 = `prior`
    (default W: structured pruning passes the kept rows of W, its inputs being fewer)."""
    lam = pull * float(np.mean(np.diag(h))) + 1e-12
    w0 = w if prior is None else prior
    return np.linalg.solve(h + lam * np.eye(h.shape[0]), c @ w + lam * w0)


def sequential_prune(
    mod,
    layers: list[Layer],
    feeds,
    spec: PruneSpec,
    damp: float,
    pull: float,
    bias: bool,
    target,
    say,
) -> SequentialResult:
    """Each of `layers` pruned in graph order against the dense outputs (module docstring);
    bias: with the mean-shift corrections (later layers then see corrected inputs)."""
    tapped, _ = tap_module(mod)
    names = [ly.name for ly in layers]
    say(f"prune: building the tapped graph with {len(names)} layer weights as inputs")
    probe = WeightProbe(tapped, names, target)
    index = {ly.name: i for i, ly in enumerate(find_layers(mod["main"]))}
    params = [p.name for p in mod["main"].params]
    out = SequentialResult()
    dense = [_dense_taps(probe, feed, params, [index[ly.name] for ly in layers]) for feed in feeds]
    meter = Meter(len(layers), "prune sparsegpt (sequential)", say, unit="layers", every=0.5)
    for n, ly in enumerate(layers):
        stats = _Stats()
        for feed, taps in zip(feeds, dense):
            keep = feed.get(MASK_INPUT)
            xp = probe.run([feed[p] for p in params], out.weights, out.corrections)
            xd = taps[index[ly.name]]
            stats.add(layer_rows(ly, xp[index[ly.name]], keep), layer_rows(ly, xd, keep))
        w = as_kn(ly).astype(np.float64)
        h, c, hd = stats.moments(centered=bias)
        new = prune_sparsegpt(refit(h, c, w, pull), h, spec, damp)
        mag = magnitude(w, spec)
        out.errors[ly.name] = (dense_error(h, c, hd, w, mag), dense_error(h, c, hd, w, new))
        out.weights[ly.name] = from_kn(ly, new)
        mean_p, mean_d = stats.sum_p / max(stats.rows, 1), stats.sum_d / max(stats.rows, 1)
        if bias:
            out.corrections[ly.name] = (mean_p @ new - mean_d @ w).astype(np.float32)
        meter.update(n + 1, ly.name)
    return out
