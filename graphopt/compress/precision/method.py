"""`--precision bf16|fp16|mixed`: layers with 16-bit weights and activations, fp32 sums.

Which layers: every constant-weight matmul and pointwise (1x1) conv with static input
channels (`layers.py`; the other dims may be symbolic), lowered by the `lower-precision`
pass; kept fp32 are the layers named in `skip`, the model's first and last layer (unless
`edges`, or unless measured safe: with calibration or evaluation data and no --max-drop, the
model with every other candidate 16-bit, as deployed, runs with the two fp32 and 16-bit, and
while making them 16-bit moves its score on the data by more than EDGE_MAX_DROP the more
sensitive stays fp32), and, with --max-drop, the
most sensitive layers the budget keeps (budget.py; the first and last layer are then
measured like any other). `mixed` is bf16 with the budget.
On x86, depthwise and full (one-group) convs of static shapes are 16-bit layers too
(`depthwise`, `windows`: the stem's 3x3 as the matmul over its gathered windows); grouped
convs stay fp32 (no 16-bit kernel for them), as do reductions (softmax, layer norm,
pooling), except that a bf16 model's fused attention groups run on the bf16 attention
kernel where the target has one (`attention`; the budget's artifact check scores it with
the rest). Embedding tables of at least 1 MiB are 16-bit too
(`embeddings`); the budget does not move them (the artifact check scores them with the rest).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import tvm

from ...pass_infra import make_pass, registered_passes
from ...precision_ops import kernel_note
from .. import CompressionContext, CompressionPlan
from ..common.budget import check_budget_options, eval_feeds
from ..common.data import load_calibration
from ..common.errors import CalibrationError
from ..common.layers import Layer, find_layers
from ..common.metrics import Metric
from ..int4.embedding import find_tables
from .budget import Choice, SwitchRunner, choose, switch_module
from .layers import supported
from .report import format_report, layer_rows

MANIFEST_KEY = "precision"
# How far (metric points: top-1 agreement or min cosine, x100) 16-bit first and last layers
# may move the score on the given data and still be taken: 0.1 lets no photo change class
# among fewer than a thousand, and min cosine move by at most 0.001
EDGE_MAX_DROP = 0.1
CHOICES = ("bf16", "fp16", "mixed")
TARGETS = ("x86", "arm")


@dataclass(frozen=True)
class PrecisionOptions:
    """What `--precision ...` asks for."""

    precision: str = "bf16"  # bf16 | fp16 | mixed (bf16 under --max-drop)
    skip: tuple[str, ...] = ()  # layers kept fp32
    edges: bool = False  # also the first and last layer 16-bit (without a budget)
    embeddings: bool = True  # 16-bit embedding tables (gathers from a constant >= 1 MiB)
    attention: bool = True  # bf16: fused attention groups on vdpbf16ps where the target has it
    max_drop: float | None = None
    calibration: str | None = None
    eval_data: str | None = None
    metric: str = "auto"
    sensitivity_samples: int = 32  # feeds the budget is scored on (without --eval)
    layer_samples: int = 8  # feeds each layer's sensitivity is measured on

    @property
    def dtype(self) -> str:
        return "bf16" if self.precision == "mixed" else self.precision


def check_options(o: PrecisionOptions, target: str) -> None:
    if o.precision not in CHOICES:
        raise CalibrationError(f"--precision must be one of {', '.join(CHOICES)}")
    if target not in TARGETS:
        raise CalibrationError(
            f"--precision is for CPU targets ({', '.join(TARGETS)}); for cuda use "
            "--target-opt precision=fp16|bf16"
        )
    if o.precision == "mixed" and o.max_drop is None:
        raise CalibrationError("--precision mixed needs --max-drop X (and --calibration or --eval)")
    check_budget_options(o)


@dataclass
class Precision:
    """bf16 / fp16 matmuls, pointwise convs and embedding tables (docs/PRECISION.md)."""

    options: PrecisionOptions
    name: str = "precision"
    symbolic_shapes: ClassVar[bool] = True  # kernels take symbolic rows; data any size in range
    requires: tuple[str, ...] = ("fold-constants",)

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        o = self.options
        check_options(o, ctx.target.name)
        if "lower-precision" not in registered_passes():
            raise CalibrationError("--precision needs the lower-precision pass (graphopt.passes)")
        every = find_layers(mod["main"])
        convs = _conv_kernels(ctx.target.name)
        candidates = [ly for ly in every if supported(ly, convs, convs)]
        held = {ly.name: "skip" for ly in candidates if ly.name in o.skip}
        edges = {}
        if o.max_drop is None and not o.edges and every:
            edges = {every[0].name: "first layer", every[-1].name: "last layer"}
        measured = bool(edges) and bool(o.calibration or o.eval_data)
        if not measured:
            for name, why in edges.items():
                held.setdefault(name, why)
        planner = _Planner(o, every, candidates, held, ctx, mod["main"])
        if o.max_drop is not None:
            planner.budget(mod, o.max_drop)
        elif measured:
            planner.budget(mod, EDGE_MAX_DROP, edges)
        return planner.plan(planner.choice.level if planner.choice else 0)


@dataclass
class _Planner:
    """The plan at any level of the budget (how many sensitive layers stay fp32)."""

    o: PrecisionOptions
    every: list[Layer]
    candidates: list[Layer]
    held: dict[str, str]
    ctx: CompressionContext
    func: object = None  # main before compression (the embedding tables)
    choice: Choice | None = None
    check: object = None
    max_drop: float | None = None  # the budget the choice was made under
    reasons: dict[str, str] | None = None  # the layers measured (the edges): why kept fp32

    @property
    def tables(self) -> list[list[int]]:
        """Shapes of the embedding tables made 16-bit (not budgeted: 16-bit in every mix)."""
        if not self.o.embeddings:
            return []
        return [list(t.shape) for t in find_tables(self.func, 1)]

    def budget(self, mod: tvm.IRModule, max_drop: float, only: dict | None = None) -> None:
        """Choose which layers stay fp32 within `max_drop` of the fp32 score: all candidates,
        or those named in `only` (name -> why kept, the edges measured for safety)."""
        from ..int8.flow import evaluation_target

        o, ctx = self.o, self.ctx
        layers = [ly for ly in self.candidates if ly.name not in self.held]
        measured = layers
        if only is not None:  # the edges, judged inside the model with every other layer 16-bit
            measured = [ly for ly in layers if ly.name in only]
            only = {ly.name: only[ly.name] for ly in measured}  # the edges that are candidates
        self.max_drop, self.reasons = max_drop, only
        if not measured:
            return
        calib = load_calibration(o.calibration, ctx.inputs) if o.calibration else []
        feeds, labels = eval_feeds(o.eval_data, ctx.inputs, calib, o.sensitivity_samples)
        if not feeds:
            raise CalibrationError("--precision: no evaluation feeds in the data given")
        clock = time.perf_counter()
        what = "first and last layer" if only else "max-drop"
        ctx.progress(f"precision {what}: building the switchable graph ({len(layers)} layers)")
        runner = SwitchRunner(
            switch_module(mod, layers, o.dtype),
            layers,
            evaluation_target(ctx.target),
            [ly.name for ly in measured],
        )
        self.choice = choose(
            runner, feeds, max_drop, labels=labels, metric=o.metric,
            layer_samples=o.layer_samples, say=ctx.progress,
        )  # fmt: skip
        self.choice.seconds["total"] = round(time.perf_counter() - clock, 2)
        params = [p.name for p in mod["main"].params]
        inputs = [[feed[p] for p in params] for feed in feeds]
        score = self.choice.score_outputs
        if only is not None:  # the artifact is scored against fp32, not the 16-bit context
            ref = [runner.fp32(feed) for feed in feeds]
            metric = Metric.choose(ref, labels, o.metric)

            def score(got):
                return metric.score(ref, got)

        self.check = lambda run: score([run(arrays)[0] for arrays in inputs])

    def precisions(self, level: int) -> tuple[dict[str, str], dict[str, str]]:
        """Per layer: precision and, for the layers kept fp32, why."""
        why = dict(self.held)
        if self.choice is not None:
            chosen = self.choice.level
            for i, name in enumerate(self.choice.kept(level)):
                why[name] = "max-drop" if i < chosen else "artifact budget"
                if self.reasons:  # an edge that was measured unsafe
                    why[name] = f"{self.reasons[name]}, measured"
        dtype = self.o.dtype
        names = {ly.name for ly in self.candidates}
        return {ly.name: dtype if ly.name in names and ly.name not in why else "fp32"
                for ly in self.every}, why  # fmt: skip

    def plan(self, level: int) -> CompressionPlan:
        o, choice = self.o, self.choice
        precisions, why = self.precisions(level)
        skip = [name for name, p in precisions.items() if p == "fp32"]
        opts = {
            "precision": o.dtype,
            "depthwise": "true" if _conv_kernels(self.ctx.target.name) else "false",
            "windows": "true" if _conv_kernels(self.ctx.target.name) else "false",
            "embeddings": "true" if o.embeddings else "false",
            "attention": "true" if o.attention and o.dtype == "bf16" else "false",
        }
        if skip:
            opts["skip"] = ":".join(skip)
        manifest = {
            "scheme": o.dtype,
            "settings": {**asdict(o), "skip": list(o.skip)},
            "note": kernel_note(self.ctx.target.tvm_target(), o.dtype),
            **layer_rows(
                self.every,
                precisions,
                why,
                self.candidates,
                self.tables,
                o.dtype,
                _conv_kernels(self.ctx.target.name),
            ),
            "accuracy": _accuracy(choice, level),
        }
        if choice is not None and self.reasons:
            manifest["accuracy"]["measured"] = sorted(self.reasons)
        # The edges' measurement is of each alone, not a budget for the whole model: the
        # artifact is scored but not held to it
        budgeted = choice is not None and self.reasons is None
        more = budgeted and level < len(choice.order)
        return CompressionPlan(
            MANIFEST_KEY,
            [make_pass("lower-precision", opts)],
            manifest,
            format_report(manifest),
            self.check,
            budget=choice.scores["fp32"] - self.max_drop if budgeted else None,
            tighten=(lambda: self.plan(level + 1)) if more else None,
        )


def _conv_kernels(target: str) -> bool:
    """Whether `--precision` makes depthwise and window convs 16-bit on the target: x86,
    where the kernels were measured. They build for ARM too (`lower-precision{depthwise=true,
    windows=true}`), unmeasured on a board, so `--precision` keeps ARM's scheduled fp32
    convs."""
    return target == "x86"


def _accuracy(c: Choice | None, level: int) -> dict | None:
    if c is None:
        return None
    return {
        "metric": c.metric, "samples": c.samples, **c.scores, "level": level,
        "order": c.order, "layers": c.rows, "seconds": c.seconds,
    }  # fmt: skip
