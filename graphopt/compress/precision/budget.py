"""`--precision ... --max-drop X`: which layers stay fp32 so the model meets the budget.

Scoring any mix of 16-bit and fp32 layers needs the model run with that mix, so one graph is
built with the choice as inputs: per layer i a [1] flag f_i,

    x' = where(f_i, r(x), x),   W' = where(f_i, r(W), W)

r rounds to the 16-bit format exactly as the artifact's kernels do (`graphopt.precision_ops`;
r(x) is a TIR kernel, r(W) a constant), so f_i = 1 computes with the layer's 16-bit operands
(summed in the matmul's own order) and all flags 0 is the fp32 graph. Layers are ordered by
their sensitivity (SQNR of the model output with only that layer 16-bit, lowest first); level
k keeps the k most sensitive fp32, bisection finds the lowest level within the budget
(`common.budget.fewest_kept`), and compile's artifact check climbs one level at a time while
the built model misses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...binding_graph import shape_dims
from ...precision_ops import round_kernel, round_to
from ...target_infra import Target
from ..common.budget import FlagGraph, fewest_kept
from ..common.layers import Layer, find_layers
from ..common.metrics import Metric, cosines, sqnr_db


@dataclass
class Choice:
    """The budget's decision and what it was based on (the manifest's `accuracy`)."""

    order: list[str]  # layers, most sensitive first
    level: int  # how many of `order` stay fp32
    rows: list[dict]  # per layer: SQNR and cosine of the output with only it 16-bit
    scores: dict  # fp32, all_16bit, final
    metric: str
    samples: int
    seconds: dict = field(default_factory=dict)
    score_outputs: Callable[[list[np.ndarray]], float] | None = field(default=None, repr=False)

    def kept(self, level: int | None = None) -> list[str]:
        return self.order[: self.level if level is None else level]


def switch_module(mod: tvm.IRModule, layers: list[Layer], precision: str) -> tvm.IRModule:
    """`mod` with every layer of `layers` switchable: main takes f_1..f_n after its inputs."""
    func = relax.transform.ToNonDataflow()(mod)["main"]
    wanted = {ly.name for ly in layers}
    layers = [ly for ly in find_layers(func) if ly.name in wanted]
    rewriter = _Switch(mod, layers, precision)
    body = rewriter.visit_expr(func)
    new = rewriter.builder_.get()
    new["main"] = relax.Function(
        [*func.params, *rewriter.flags], body.body, body.ret_ty, attrs=func.attrs
    )
    return relax.transform.ConvertToDataflow()(relax.transform.Normalize()(new))


@mutator
class _Switch(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, layers: list[Layer], precision: str) -> None:
        super().__init__(mod)
        self.layers, self.precision = layers, precision
        self.flags = [relax.Var(f"f_{ly.name}", relax.TensorType([1], "float32")) for ly in layers]
        self.kernels: dict = {}

    def _where(self, flag: relax.Var, yes: relax.Expr, no: relax.Expr) -> relax.Expr:
        on = R.greater(flag, relax.const(0.5, "float32"))
        return self.builder_.emit(R.where(on, yes, no))

    def _rounded(self, x: relax.Expr) -> relax.Expr:
        shape = shape_dims(x)  # symbolic dims by name
        if shape not in self.kernels:
            self.kernels[shape] = self.builder_.add_func(
                round_kernel(shape, self.precision), "round16"
            )
        out = relax.TensorType(x.ty.shape, "float32")
        call = relax.call_tir(self.kernels[shape], [x], out)
        return self.builder_.emit(call)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        i = next((i for i, ly in enumerate(self.layers) if ly.call.same_as(call)), None)
        if i is None:
            return super().visit_call_(call)
        layer, flag = self.layers[i], self.flags[i]
        x, w = self.visit_expr(call.args[0]), self.visit_expr(call.args[1])
        x = self._where(flag, self._rounded(x), x)
        w = self._where(flag, relax.const(round_to(layer.weight, self.precision)), w)
        return relax.Call(call.op, [x, w], call.attrs, call.ty_args)


class SwitchRunner:
    """The built switchable graph: `run(on, feed)` -> the model's first output with the layers
    named in `on` 16-bit. `measured`: the layers a choice is about (default: every switchable
    layer); the others are 16-bit in every run (the context the measured ones are judged in),
    except in `fp32`."""

    def __init__(
        self, mod: tvm.IRModule, layers: list[Layer], target: Target, measured=None
    ) -> None:
        self.flags = [ly.name for ly in layers]  # the graph's flags, in its order
        self.names = list(measured) if measured is not None else list(self.flags)
        self.context = set(self.flags) - set(self.names)
        self.graph = FlagGraph(mod, target, len(layers))

    def run(self, on: set[str], feed: Mapping[str, np.ndarray]) -> np.ndarray:
        on = on | self.context
        return self.graph(feed, [self.graph.flag(n in on) for n in self.flags])

    def fp32(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """Every layer fp32."""
        return self.graph(feed, [self.graph.flag(False) for _ in self.flags])


def choose(
    runner: SwitchRunner,
    feeds: Sequence[Mapping[str, np.ndarray]],
    max_drop: float,
    *,
    labels: np.ndarray | None = None,
    metric: str = "auto",
    layer_samples: int = 8,
    say: Callable[[str], None] = lambda _m: None,
) -> Choice:
    """Sensitivity per layer, then the fewest most sensitive layers kept fp32 within
    `max_drop` of the fp32 score."""
    clock, names = time.perf_counter(), runner.names
    ref = [runner.run(set(), feed) for feed in feeds]
    m = Metric.choose(ref, labels, metric)
    fp32 = m.score(ref, ref)
    rows = _rows(runner, feeds, ref, layer_samples)
    order = [r["layer"] for r in sorted(rows, key=lambda r: r["sqnr_db"])]
    seconds = {"layers": time.perf_counter() - clock}
    clock = time.perf_counter()

    def score(level: int) -> float:
        got = m.score(ref, [runner.run(set(order[level:]), feed) for feed in feeds])
        say(f"max-drop: {level} of {len(names)} layer(s) kept fp32 -> {got:.2f}")
        return got

    all16 = score(0)
    level, final = 0, all16
    if fp32 - all16 > max_drop:
        level, final = fewest_kept(len(order), score, fp32, max_drop)
    seconds["search"] = time.perf_counter() - clock
    return Choice(
        order,
        level,
        rows,
        {"fp32": round(fp32, 4), "all_16bit": round(all16, 4), "final": round(final, 4)},
        m.kind,
        len(feeds),
        {k: round(v, 2) for k, v in seconds.items()},
        lambda got: m.score(ref, got),
    )


def _rows(runner: SwitchRunner, feeds, ref, samples: int) -> list[dict]:
    """Each layer alone 16-bit (every other fp32) on `samples` evenly spaced feeds."""
    k = min(samples, len(feeds))
    which = sorted({round(i * (len(feeds) - 1) / max(k - 1, 1)) for i in range(k)})
    ref_k = [ref[i] for i in which]
    rows = []
    for name in runner.names:
        got = [runner.run({name}, feeds[j]) for j in which]
        rows.append(
            {
                "layer": name,
                "sqnr_db": round(sqnr_db(np.concatenate(ref_k), np.concatenate(got)), 2),
                "cosine": round(float(cosines(ref_k, got).mean()), 6),
            }
        )
    return rows
