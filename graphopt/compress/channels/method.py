"""`--prune macs=X`: structured pruning of hidden channels to X of the layers' multiply-adds.

Finds the prunable regions (`chains.py`: FFN units, expansion channels), measures the
consumers' inputs on the calibration data, drops the channels whose removal costs the least
output error per multiply-add (`fit.py`), refits each consumer by least squares and writes the
decision for the `prune-channels` pass. The result is a smaller dense model: every kernel
stays the fast dense one, so the saved multiply-adds are saved time.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import tvm
from tvm import relax

from ...build import resolve_target
from ...pass_infra import make_pass
from ...target_infra import Target
from .. import CompressionContext, CompressionPlan
from ..common.budget import check_budget_options, eval_feeds
from ..common.data import fitting_feeds
from ..common.errors import CalibrationError
from ..common.layers import Layer, find_layers
from ..common.metrics import Metric
from ..int4.hessian import conv_rows
from ..int8.calibrate import tap_module
from ..prune.layers import as_kn
from .chains import Region, producers, taps, window_rows
from .fit import RegionStats, channel_scores, choose_kept, group_scores, refit
from .heads import HeadRegion, find_all, units
from .sequential import sequential_refit

MANIFEST_KEY = "channels"
MASK_INPUT = "attention_mask"
SELECT = ("obs", "magnitude")
KINDS = ("all", "channels", "heads")
ROWS_PER_CHANNEL = 4  # fewer calibration rows than this per fitted channel: warn
SEQUENTIAL_ROWS = 1  # fewer than this per channel: the one-shot refit (`_warn_small`)


@dataclass(frozen=True)
class ChannelOptions:
    macs: float  # keep this fraction of the layers' multiply-adds
    calibration: str | None = None
    samples: int = 64
    multiple: int = 8  # kept channels per region: a multiple of this (SIMD widths)
    min_keep: float = 0.1  # a region keeps at least this fraction of its channels
    refit: bool = True  # least-squares refit of the consumers (else: the kept rows as they are)
    # added to the covariance's diagonal, times its mean: shrinks the refit and makes the
    # channel scores less sure of the calibration data's correlations. MobileNetV2, -10% MACs,
    # 32 calibration crops of 7 photos, top-1 on 64 crops of 8 others: 0.01 32/64, 0.1 43/64,
    # 1.0 48/64, 3.0 44/64 (-25%: 1.0 27/64, 3.0 11/64)
    damp: float = 1.0
    pull: float = 0.0  # refit: toward the original weights (fit.refit; hurt on MobileNetV2)
    # refit each consumer on the already-pruned model's inputs, in graph order (sequential.py);
    # damp is then its pull toward the original weights
    sequential: bool = True
    kinds: str = "all"  # which regions: "channels" (FFN units, expansions), "heads", "all"
    # Adam steps of block distillation after the refit (distill.py; 0: none)
    distill: int = 0
    # --max-drop: the fewest multiply-adds, down to `macs`, within this many points of the
    # unpruned model's score (budget.py); `metric` what is scored ("auto": as int8's)
    max_drop: float | None = None
    metric: str = "auto"
    select: str = "obs"  # "obs" (OBS cost per MAC) or "magnitude" (consumer row norms per MAC)
    eval_data: str | None = None  # --eval: what the artifact is scored on (else calibration)


def check_options(o: ChannelOptions) -> None:
    if not 0.0 < o.macs < 1.0:
        raise CalibrationError(f"--prune macs={o.macs:g}: keep a fraction between 0 and 1")
    if not o.calibration:
        raise CalibrationError("--prune macs=... needs --calibration DATA (the refit needs it)")
    if o.kinds not in KINDS:
        raise CalibrationError(f"--prune macs: regions={o.kinds}: one of {', '.join(KINDS)}")
    if o.select not in SELECT:
        raise CalibrationError(f"--prune macs: select={o.select}: one of {', '.join(SELECT)}")
    if o.distill < 0:
        raise CalibrationError(f"--prune macs: distill={o.distill}: a number of steps, >= 0")
    check_budget_options(o)


def layer_macs(layer: Layer) -> float:
    """Multiply-adds of one conv2d / matmul layer, from its output shape."""
    out = [int(d) for d in layer.call.ty.shape.values]
    w = layer.weight_shape
    if layer.kind == "conv2d":
        return float(np.prod(out)) * w[1] * w[2] * w[3]
    return float(np.prod(out)) * w[0]


def _channel_macs(region, func, macs: dict[str, float]) -> float:
    """Multiply-adds one hidden channel of the region costs (producers, depthwise convs,
    consumer; a concatenation's channels at their average)."""
    q = region.consumer
    if isinstance(region, HeadRegion):  # Q, K, V and the output projection
        return sum(macs[ly.name] for ly in (*region.qkv, q)) / region.channels
    dw = {ly.var: ly for ly in find_layers(func) if ly.kind == "conv2d"}
    branches = getattr(region, "branches", None)
    chains = [b.bindings for b in branches] if branches else [region.bindings]
    total = macs[q.name] + sum(macs[p.name] for p in producers(region))
    total += sum(macs[dw[v].name] for chain in chains for v in chain[1:] if v in dw)
    return total / region.channels


def region_budget(func, regions: list[Region], macs: float, min_keep: float, sizes=None):
    """(all layers' multiply-adds, per-channel multiply-adds per region, the fraction of the
    regions' multiply-adds to keep so the whole model keeps `macs` of its own). Symbolic dims
    count at `sizes` (name -> size: the example sizes of their ranges)."""
    static = func.bind_symbolic_vars(sizes) if sizes else func
    by_name = {ly.name: layer_macs(ly) for ly in find_layers(static)}
    all_macs = sum(by_name.values())
    per_channel = {r.name: _channel_macs(r, func, by_name) for r in regions}
    region_macs = sum(per_channel[r.name] * r.channels for r in regions)
    target = 1.0 - (1.0 - macs) * all_macs / region_macs
    if target < min_keep:
        raise CalibrationError(
            f"--prune macs={macs:g}: the prunable channels hold "
            f"{region_macs / all_macs:.0%} of the multiply-adds; macs >= "
            f"{1 - (1 - min_keep) * region_macs / all_macs:.2f} is the most this model allows"
        )
    return all_macs, per_channel, target


@dataclass
class Channels:
    """Structured pruning of hidden channels (FFN units, expansion channels) with refit."""

    options: ChannelOptions
    name: str = "prune-channels"
    # fold-pad: a TF-style explicit zero pad before a strided depthwise conv (EfficientNet-
    # Lite0) would end its region; folded into the conv's padding, 15 regions there, not 2
    requires: tuple[str, ...] = ("fold-constants", "fold-pad")
    # Fits on samples of any size in the dims' ranges; multiply-adds count at the example
    # sizes (CompressionContext.sizes); the pruned layers are dense layers of any size
    symbolic_shapes: ClassVar[bool] = True

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        o = self.options
        check_options(o)
        regions = find_all(mod, o.kinds)
        if not regions:
            ctx.progress("prune macs: no prunable channels (no FFN / expansion / head regions)")
            return None
        clock = time.perf_counter()
        feeds = fitting_feeds(o.calibration, ctx.inputs, o.samples, ctx.progress, "prune macs")
        scored, labels = eval_feeds(o.eval_data, ctx.inputs, feeds)
        stats, ref = _measure(mod, regions, feeds, scored, ctx)
        enough = _warn_small(regions, stats, ctx.progress, o.sequential and o.refit)
        how = "sequential" if o.sequential and o.refit and enough else "one-shot"
        job = _Job(mod, ctx, o, regions, feeds, scored, stats, ref, labels, clock, how)
        if o.max_drop is None:
            return job.plan_at(o.macs)
        from .budget import search_macs

        job.search = search_macs(job)
        if job.search.chosen is None:
            ctx.progress(
                f"prune macs: no level from {o.macs:g}x of the multiply-adds up keeps "
                f"{job.metric.kind} within --max-drop {o.max_drop:g}: nothing pruned"
            )
            return None
        return job.plan_at(job.search.chosen)


@dataclass
class _Job:
    """One `--prune macs` compile: what every MAC level's plan is made from."""

    mod: tvm.IRModule
    ctx: CompressionContext
    o: ChannelOptions
    regions: list
    feeds: list
    scored: list
    stats: dict
    ref: list
    labels: np.ndarray | None
    clock: float
    how: str  # the refit: "sequential" or "one-shot" (too few calibration rows)
    search: object = None  # budget.MacsSearch under --max-drop
    refitted: dict = field(default_factory=dict)  # MAC level -> its refit decision

    @property
    def metric(self) -> Metric:
        return Metric.choose(self.ref, self.labels, self.o.metric)

    @property
    def run_target(self) -> Target:
        from ..int8.flow import evaluation_target

        return evaluation_target(resolve_target(self.ctx.target))

    def plan_at(self, macs: float) -> CompressionPlan:
        """The plan that keeps `macs` of the multiply-adds (under --max-drop: scored against
        the budget, with the next level up as its tighter plan)."""
        o, func = self.o, self.mod["main"]
        all_macs, per_channel, target = region_budget(
            func, self.regions, macs, o.min_keep, self.ctx.sizes
        )
        decision = self.refitted.get(macs)  # the budget search planned this level already
        if decision is None:
            decision = self.refit(decide(self.regions, self.stats, per_channel, target, o))
        gains = None
        if o.distill:
            decision, gains = _distilled(self, decision)
        seconds = round(time.perf_counter() - self.clock, 2)
        workdir = tempfile.TemporaryDirectory(prefix="graphopt-channels-")
        path = Path(workdir.name) / "channels.npz"
        np.savez(path, **{f"{n}.{k}": v for n, d in decision.items() for k, v in d.items()})
        manifest = _manifest(o, self.regions, decision, per_channel, all_macs, seconds)
        manifest["refit"] = self.how if o.refit else "none"
        if gains is not None:
            manifest["distill"] = {"steps": o.distill, "held_out_gain": gains}
        plan = CompressionPlan(
            MANIFEST_KEY,
            [make_pass("prune-channels", {"plan": str(path)})],
            manifest,
            format_report(manifest),
            self._check(manifest),
            cleanup=workdir.cleanup,
        )
        if self.search is not None:
            self.search.attach(plan, macs, self.plan_at)
        return plan

    def refit(self, decision: dict, probe=None) -> dict:
        """The one-shot decision refit sequentially when that is the job's refit."""
        if self.how != "sequential":
            return decision
        kept = {n: d["keep"] for n, d in decision.items()}
        return sequential_refit(
            self.mod, self.regions, self.feeds, kept, self.o.damp, self.run_target,
            self.ctx.progress, probe=probe,
        )  # fmt: skip

    def _check(self, manifest: dict):
        """The artifact's score on the scored feeds (calibration, or --eval)."""
        params = [p.name for p in self.mod["main"].params]
        inputs = [[feed[p] for p in params] for feed in self.scored]
        metric, ref = self.metric, self.ref
        data = "eval" if self.o.eval_data else "calibration"
        manifest["accuracy"] = {"metric": metric.kind, "samples": len(inputs), "data": data}

        def check(run) -> float:
            return metric.score(ref, [run(arrays)[0] for arrays in inputs])

        return check


def _distilled(job: _Job, decision: dict):
    from .distill import distill

    return distill(
        job.mod, job.regions, job.feeds, decision, job.run_target, job.ctx.progress,
        steps=job.o.distill,
    )  # fmt: skip


def _rows(x: np.ndarray, region, mask) -> np.ndarray:
    """The consumer input as the rows its weight multiplies (a conv's windows, `conv_rows`),
    without padding rows."""
    if region.consumer.kind == "conv2d":
        return conv_rows(region.consumer, np.asarray(x, np.float64))
    if mask is not None and x.ndim == 3 and tuple(np.shape(mask)) == x.shape[:2]:
        return x[np.asarray(mask) != 0]
    return x.reshape(-1, x.shape[-1])


def output_count(mod) -> int:
    """How many outputs `main` returns (a tuple of outputs may be bound to a var)."""
    result = mod["main"].body.body.ty
    return len(result.fields) if isinstance(result, relax.TupleType) else 1


def _measure(mod, regions: list[Region], feeds, scored, ctx: CompressionContext):
    """Consumer-input statistics per region on `feeds`, and the fp32 outputs of `scored`
    (what the artifact will be compared with), from one tapped build."""
    from ...build import build_runner
    from ..int8.flow import evaluation_target

    tapped, names = tap_module(mod)
    index = {n: i for i, n in enumerate(names)}
    n_out = output_count(mod)
    ctx.progress(f"prune macs: measuring {len(regions)} regions on {len(feeds)} feeds")
    target: Target = evaluation_target(resolve_target(ctx.target))
    run = build_runner(tapped, target, arg_checks=False)
    params = [p.name for p in mod["main"].params]
    stats = {r.name: RegionStats() for r in regions}
    ref = []
    for i, feed in enumerate(feeds):
        out = run([feed[p] for p in params])
        for r in regions:
            x = np.asarray(out[index[r.consumer.name]])
            stats[r.name].add(_rows(x, r, feed.get(MASK_INPUT)))
        ctx.progress(f"prune macs: calibration feed {i + 1}/{len(feeds)}")
    for feed in scored:
        out = run([feed[p] for p in params])
        ref.append(np.asarray(out[len(out) - n_out]))
    return stats, ref


def _warn_small(regions: list[Region], stats: dict, say, sequential: bool = False) -> bool:
    """Whether the sequential refit may run; one warning line when the calibration rows are
    few for the widest region's channels (fewer than ROWS_PER_CHANNEL each): the refit then
    fits those samples and the pruned model generalizes worse. Below SEQUENTIAL_ROWS a
    channel, the sequential refit, which also fits the errors it propagates, is left out:
    MiniLM, 600 tokens for 1536 FFN units (0.4 a channel), min cosine 0.74 sequential against
    0.82 one-shot at 0.7x MACs; MobileNetV2 on 32 crops, 1568 rows for 960 channels (1.6),
    top-1 38/64 sequential against 28/64 one-shot at 0.8x (docs/SPARSITY.md)."""
    worst = min(regions, key=lambda r: stats[r.name].n / r.channels)
    rows = stats[worst.name].n
    enough = rows >= SEQUENTIAL_ROWS * worst.channels
    if rows >= ROWS_PER_CHANNEL * worst.channels:
        return True
    say(
        f"warning: prune macs: {rows} calibration rows for the {worst.channels} channels of "
        f"{worst.name} (fewer than {ROWS_PER_CHANNEL} per channel): the refit may fit these "
        "samples; give more, more varied calibration data"
        + ("; refitting one-shot, not sequentially" if sequential and not enough else "")
    )
    return enough


def _scores(w: np.ndarray, cov: np.ndarray, size: int, o: ChannelOptions) -> np.ndarray:
    """Per-unit cost (a channel, or a head of `size` channels): OBS with the refit, or the
    consumer rows' share of its weight norm."""
    if o.select == "magnitude":
        norms = np.sum(np.asarray(w, np.float64) ** 2, axis=1).reshape(-1, size).sum(1)
        return norms / max(float(norms.sum()), 1e-30)
    if size > 1:
        return group_scores(w, cov, size, o.refit)
    return channel_scores(w, cov, o.refit)


def decide(regions, stats, per_channel, target: float, o: ChannelOptions) -> dict:
    """{region: {keep, weight, bias}}: the channels kept (scored on the dense model's
    statistics, chosen across regions) and the one-shot refit of each consumer."""
    moments = {r.name: stats[r.name].moments(o.damp) for r in regions}
    weights = {r.name: as_kn(r.consumer) for r in regions}
    size = {r.name: units(r) for r in regions}
    window = {r.name: taps(r.consumer) for r in regions}  # weight rows per channel
    scores = {
        r.name: _scores(weights[r.name], moments[r.name][1], size[r.name] * window[r.name], o)
        for r in regions
    }
    per_unit = {n: m * size[n] for n, m in per_channel.items()}
    steps = {n: o.multiple if k == 1 else 1 for n, k in size.items()}
    kept = choose_kept(scores, per_unit, target, steps, o.min_keep)
    decision = {}
    for r in regions:
        k = size[r.name]
        keep = window_rows(kept[r.name], k)  # units -> channels
        rows = window_rows(keep, window[r.name])  # channels -> the consumer's weight rows
        mu, cov = moments[r.name]
        if o.refit:
            w_new, c = refit(weights[r.name], mu, cov, rows, o.pull)
        else:
            w_new, c = weights[r.name][rows], np.zeros(weights[r.name].shape[1], np.float32)
        decision[r.name] = {"keep": keep.astype(np.int64), "weight": w_new, "bias": c}
    return decision


def _manifest(o, regions, decision, per_channel, all_macs, seconds) -> dict:
    rows, removed = [], 0.0
    for r in regions:
        kept = len(decision[r.name]["keep"])
        removed += (r.channels - kept) * per_channel[r.name]
        rows.append(
            {
                "region": r.name,
                "consumer": r.consumer.name,
                "channels": r.channels,
                "kept": kept,
                "macs_per_channel": per_channel[r.name],
            }
        )
    return {
        "scheme": "structured channels",
        "settings": asdict(o),
        "regions": rows,
        "macs": {"before": all_macs, "after": all_macs - removed},
        "ratio": round((all_macs - removed) / all_macs, 4),
        "seconds": {"prune": seconds},
    }


def format_report(m: dict) -> str:
    from ...tables import format_table

    rows = [
        [r["region"], r["consumer"], r["channels"], r["kept"], f"{r['kept'] / r['channels']:.0%}"]
        for r in m["regions"]
    ]
    b = m.get("budget")
    level = (
        f"{b['chosen']:g} (floor {m['settings']['macs']:g})" if b else f"{m['settings']['macs']:g}"
    )
    head = (
        f"prune macs={level}: {len(m['regions'])} regions, layer "
        f"multiply-adds {m['macs']['before'] / 1e6:.1f}M -> {m['macs']['after'] / 1e6:.1f}M "
        f"({m['ratio']:.0%})"
    )
    lines = [head, format_table(["region", "consumer", "channels", "kept", "share"], rows)]
    if b:
        tried = ", ".join(f"{k}x {v:.2f}" for k, v in b["levels"].items())
        lines.append(
            f"--max-drop {b['max_drop']:g}: chose {b['chosen']:g}x of the multiply-adds "
            f"(unpruned {b['dense']:.2f}; levels scored: {tried})"
        )
    d = m.get("distill")
    if d and d["held_out_gain"]:
        gains = list(d["held_out_gain"].values())
        lines.append(
            f"block distillation: {d['steps']} steps a region, {len(gains)} regions; held-out "
            f"error {min(gains):.2f}x to {max(gains):.2f}x lower than the refit's"
        )
    a = m.get("accuracy", {})
    if "artifact" in a:
        lines.append(
            f"accuracy vs the unpruned model ({a['metric']}, {a['samples']} {a['data']} "
            f"feeds): {a['artifact']:.2f}"
        )
    return "\n".join(lines)
