"""`--prune SPEC`: post-training pruning of matmuls and 1x1 convs, by magnitude or SparseGPT
from calibration activations, with bias correction; the `prune` pass writes the zeros."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import tvm

from ...pass_infra import GraphPass, make_pass
from ...progress import Meter
from .. import CompressionContext, CompressionPlan
from ..common.data import fitting_feeds
from ..common.errors import CalibrationError
from ..common.layers import Layer, find_layers
from .layers import as_kn, from_kn, prunable
from .masks import fits, magnitude
from .report import format_report, layer_row, size_summary
from .sparsegpt import output_error, prune_sparsegpt
from .spec import PruneSpec
from .store import save_pruned

MANIFEST_KEY = "pruning"
METHODS = ("magnitude", "sparsegpt")


@dataclass(frozen=True)
class PruneOptions:
    """What `--prune ...` asks for."""

    spec: PruneSpec
    method: str = "sparsegpt"  # sparsegpt (needs --calibration) | magnitude
    calibration: str | None = None
    samples: int = 64  # calibration feeds for the Hessians
    # SparseGPT: added to H's diagonal, times its mean (SparseGPT's paper: 0.01)
    damp: float = 0.01
    bias_correction: bool = True  # subtract each layer's mean output shift (needs calibration)
    # SparseGPT layer by layer on the pruned model's inputs, refitted toward the dense outputs
    sequential: bool = True
    pull: float = 0.1  # sequential: the refit's pull toward the original weights (x mean H_kk)
    skip: tuple[str, ...] = ()  # layers left dense
    max_drop: float | None = None  # keep the most sensitive layers dense within this budget
    eval_data: str | None = None  # feeds (and labels y) the budget scores; else calibration
    metric: str = "auto"


def check_options(o: PruneOptions) -> None:
    if o.method not in METHODS:
        raise CalibrationError(f"--prune-method must be one of {', '.join(METHODS)}")
    if o.method == "sparsegpt" and not o.calibration:
        raise CalibrationError("--prune-method sparsegpt needs --calibration DATA (or magnitude)")
    if o.max_drop is not None and not o.calibration and not o.eval_data:
        raise CalibrationError("--max-drop with --prune needs --calibration or --eval data")
    if not (o.damp >= 0 and o.pull >= 0):
        raise CalibrationError("--prune-damp and --prune-pull must be >= 0")


@dataclass
class Prune:
    """Post-training weight pruning (docs/SPARSITY.md, "Pruning")."""

    options: PruneOptions
    name: str = "prune"
    requires: tuple[str, ...] = ("fold-constants",)
    # Calibrates on samples of any size in the dims' ranges; the block-sparse kernels take a
    # symbolic row count
    symbolic_shapes: ClassVar[bool] = True

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        o = self.options
        check_options(o)
        layers = [ly for ly in find_layers(mod["main"]) if prunable(ly)]
        if not layers:
            return None
        clock = time.perf_counter()
        feeds = _feeds(o, ctx)
        pruned = _prune_layers(mod, layers, o, ctx, feeds)
        pruned.seconds["prune"] = round(time.perf_counter() - clock, 2)
        if o.max_drop is not None:
            from .budget import budget_order

            budget_order(mod, pruned, o, ctx, feeds)
        return pruned.plan(pruned.kept)


def _feeds(o: PruneOptions, ctx: CompressionContext) -> list[dict] | None:
    """Calibration feeds, with a one-line warning when they are few."""
    if not o.calibration:
        return None
    return fitting_feeds(o.calibration, ctx.inputs, o.samples, ctx.progress, "prune")


@dataclass
class Pruned:
    """Every layer's pruned weight (and bias correction); `plan(kept)` leaves `kept` dense."""

    options: PruneOptions
    layers: list[Layer]
    weights: dict[str, np.ndarray]  # pruned, stored layout
    corrections: dict[str, np.ndarray]  # per output channel, subtracted from the bias
    rows: list[dict]  # the manifest's per-layer rows
    skipped: dict[str, str]  # layer -> why it stays dense
    seconds: dict[str, float] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # left dense by the budget, in its order
    order: list[str] = field(default_factory=list)  # most sensitive first (budget)
    budget: dict | None = None  # the search's scores and the artifact check

    def plan(self, kept: list[str]) -> CompressionPlan:
        workdir = tempfile.TemporaryDirectory(prefix="graphopt-prune-")
        path = Path(workdir.name)
        chosen = {n: w for n, w in self.weights.items() if n not in kept}
        save_pruned(path / "pruned.npz", chosen)
        passes: list[GraphPass] = [make_pass("prune", {"weights": str(path / "pruned.npz")})]
        fixes = {n: c for n, c in self.corrections.items() if n in chosen}
        if fixes:
            shapes = {ly.name: ly.weight_shape for ly in self.layers}
            arrays = {f"{n}.c": c for n, c in fixes.items()}
            arrays.update({f"{n}.shape": np.array(shapes[n]) for n in fixes})
            np.savez(path / "corrections.npz", **arrays)
            passes.append(
                make_pass("bias-correction", {"corrections": str(path / "corrections.npz")})
            )
        manifest = self.manifest(kept)
        plan = CompressionPlan(
            MANIFEST_KEY, passes, manifest, format_report(manifest), cleanup=workdir.cleanup
        )
        if self.budget is not None:
            from .budget import attach_budget

            attach_budget(plan, self, kept)
        return plan

    def manifest(self, kept: list[str]) -> dict:
        rows = []
        for r in self.rows:
            name = r["layer"]
            reason = self.skipped.get(name) or ("budget" if name in kept else None)
            rows.append(r if reason is None else layer_row(r, reason))
        o = self.options
        return {
            "spec": o.spec.text(),
            "settings": {**asdict(o), "spec": o.spec.text(), "skip": list(o.skip)},
            "layers": rows,
            "pruned_layers": sum(r["status"] == "pruned" for r in rows),
            "kept_dense": list(kept),
            "size": size_summary(rows, o.spec),
            "seconds": dict(self.seconds),
        }


def _skipped(layers: list[Layer], o: PruneOptions) -> dict[str, str]:
    """Layers left dense and why: asked for (--prune-skip), or the pattern does not fit."""
    skipped = {ly.name: "skip" for ly in layers if ly.name in o.skip}
    for ly in layers:
        why = fits(o.spec, *as_kn(ly).shape)
        if why is not None and ly.name not in skipped:
            skipped[ly.name] = why
    return skipped


def _prune_layers(mod, layers: list[Layer], o: PruneOptions, ctx, feeds) -> Pruned:
    """Each layer pruned: sequential SparseGPT toward the dense outputs (sequential.py), or
    SparseGPT from the dense model's Hessians, or magnitude; bias corrections from the mean
    inputs when there is calibration data."""
    skipped = _skipped(layers, o)
    todo = [ly for ly in layers if ly.name not in skipped]
    if o.method == "sparsegpt" and o.sequential:
        from ..int8.flow import evaluation_target
        from .sequential import sequential_prune

        target = evaluation_target(ctx.target)
        seq = sequential_prune(
            mod, todo, feeds, o.spec, o.damp, o.pull, o.bias_correction, target, ctx.progress
        )
        weights, corrections, errors = seq.weights, seq.corrections, seq.errors
    else:
        weights, corrections, errors = _one_shot(mod, todo, o, ctx, feeds)
    rows = []
    for ly in layers:
        row = {"layer": ly.name, "what": ly.describe(), "weights": int(np.prod(ly.weight_shape))}
        if ly.name in skipped:
            rows.append(layer_row(row, skipped[ly.name]))
            continue
        zeros = int(np.sum(weights[ly.name] == 0))
        row.update(status="pruned", zeros=zeros, sparsity=round(zeros / row["weights"], 4))
        if ly.name in errors:  # output error relative to the layer's output energy
            row["error_magnitude"] = round(errors[ly.name][0], 6)
            if o.method == "sparsegpt":
                row["error_sparsegpt"] = round(errors[ly.name][1], 6)
        rows.append(row)
    return Pruned(o, layers, weights, corrections, rows, skipped)


def _one_shot(mod, todo: list[Layer], o: PruneOptions, ctx, feeds):
    """Every layer from the dense model's statistics: SparseGPT, or magnitude."""
    centered = o.bias_correction and o.method == "sparsegpt"
    hs, means = _statistics(mod, todo, feeds, ctx, centered) if feeds else ({}, {})
    meter = Meter(len(todo), f"prune {o.method}", ctx.progress, unit="layers", every=0.5)
    weights, corrections, errors = {}, {}, {}
    for i, ly in enumerate(todo):
        w = as_kn(ly).astype(np.float32)
        if o.method == "sparsegpt":
            new = prune_sparsegpt(w, hs[ly.name], o.spec, o.damp)
        else:
            new = magnitude(w, o.spec)
        weights[ly.name] = from_kn(ly, new)
        if o.bias_correction and ly.name in means:
            corrections[ly.name] = (means[ly.name] @ (new - w)).astype(np.float32)
        if ly.name in hs:
            h = hs[ly.name]
            energy = max(output_error(w, np.zeros_like(w), h), 1e-30)
            mag = magnitude(w, o.spec) if o.method == "sparsegpt" else new
            errors[ly.name] = (output_error(w, mag, h) / energy, output_error(w, new, h) / energy)
        meter.update(i + 1, ly.name)
    return weights, corrections, errors


def _statistics(mod, layers: list[Layer], feeds, ctx, centered: bool) -> tuple[dict, dict]:
    """Per layer: H = X^T X / rows over the calibration feeds (centered: of X minus its
    mean), and the mean input row."""
    from ..int4.hessian import hessians
    from ..int8.flow import evaluation_target

    ctx.progress(f"prune: {len(layers)} layers, {len(feeds)} calibration feeds")
    sums: dict[str, np.ndarray] = {}
    hs, rows = hessians(
        mod,
        feeds,
        [ly.name for ly in layers],
        evaluation_target(ctx.target),
        ctx.progress,
        sums=sums,
    )
    means = {n: sums[n] / max(rows[n], 1) for n in hs}
    hs = {n: h / max(rows[n], 1) for n, h in hs.items()}
    if centered:  # the bias correction carries the mean: fit the covariance
        hs = {n: h - np.outer(means[n], means[n]) for n, h in hs.items()}
    return hs, means
