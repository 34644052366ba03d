"""`--quantize int4 --max-drop X`: which matmuls stay off int4 so the model meets the budget.

Each layer gets one of three precisions: int4 weights (fp32 activations, the W4 x fp32
kernels), the fallback (int8 weights with dynamic per-row int8 activations, as
`--quant-mode dynamic --quant-granularity row` builds them; or fp32) and fp32. A 1x1 conv's
int8 is that flow on the matmul of its pixels (`lower-int4`'s int8_convs): one scale per
pixel over the channels, one per output channel of the weight. Scoring every choice needs the
model run with any mix of them, so, as for int8, one graph is built with the choice as
inputs: per layer i, [1] flags f_i (int4) and g_i (int8),

    x' = where(f_i, x * a_i, where(g_i, QDQ_row(x), x))
    W' = where(f_i, DQ4_i, where(g_i, DQ8_i, W))

DQ4_i is the dequantized int4 weight the kernels compute with ((q - z) * s), a_i its AWQ input
scale (`awq.py`; none without AWQ), DQ8_i the dequantized int8 weight; `where` selects
exactly, so f_i = 1 is the int4 layer's operands bit for bit and all flags 0 the fp32 graph.
With W4A8 int4 layers (`--int4-activations int8`) the int4 branch's x * a_i is also rounded
per row as the W4A8 kernels round it (`row_fake_quant`: the same scale, division and round
half to even); the integer sums the kernels add in another order are left to fp32.

The search orders layers by their sensitivity (SQNR of the model output with only that
layer int4, lowest first), or by default by the output noise that layer alone adds per byte
it would add off int4 (`ladder_order`), and walks a ladder of levels: level k <= n moves the k most
sensitive layers to int8, level n + k then keeps the k most sensitive fp32 (with the fp32
fallback the ladder is only the second half). Bisection finds the lowest level within the
budget (`common.budget.fewest_kept`); the compile's artifact check climbs one level at a time
while the built model misses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R_op
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...int4_a8_ops import EPS, QMAX
from ...progress import Meter
from ...target_infra import Target
from ..common.budget import FlagGraph, fewest_kept
from ..common.layers import Layer, bound_constants, find_layers
from ..common.metrics import Metric, cosines, sqnr_db
from ..int8.qdq import dequant_weight_np, emit_dynamic_qdq, weight_qparams
from .layers import layer_weight
from .quant import Int4Weight

FALLBACKS = ("int8", "fp32")


@dataclass
class Choice:
    """The budget's decision and what it was based on (the manifest's `accuracy`)."""

    order: list[str]  # layers, most sensitive first
    level: int  # ladder level chosen
    fallback: str  # int8 | fp32
    rows: list[dict]  # per layer: SQNR and cosine of the output with only it int4
    scores: dict  # fp32, all_int4, final
    metric: str
    samples: int
    seconds: dict = field(default_factory=dict)
    score_outputs: Callable[[list[np.ndarray]], float] | None = field(default=None, repr=False)
    limit: int | None = None  # the highest level within the size cap (None: no cap)

    @property
    def top(self) -> int:
        """The highest level: every layer fp32, or the last one within the size cap."""
        top = len(self.order) * (2 if self.fallback == "int8" else 1)
        return top if self.limit is None else min(top, self.limit)

    def bits(self, level: int | None = None) -> dict[str, int]:
        return ladder_bits(self.order, self.level if level is None else level, self.fallback)


def ladder_bits(order: Sequence[str], level: int, fallback: str) -> dict[str, int]:
    """Bits per layer at `level` of the ladder (module docstring)."""
    n = len(order)
    if fallback == "fp32":
        return {name: 32 if i < level else 4 for i, name in enumerate(order)}
    if level <= n:
        return {name: 8 if i < level else 4 for i, name in enumerate(order)}
    return {name: 32 if i < level - n else 8 for i, name in enumerate(order)}


def switch_module(
    mod: tvm.IRModule,
    layers: list[Layer],
    int4: Mapping[str, Int4Weight],
    fallback: str,
    table: Callable[[relax.Call, dict], np.ndarray | None] | None = None,
    a8: bool = False,
    windows: Mapping[str, np.ndarray] | None = None,
) -> tvm.IRModule:
    """`mod` with every layer of `layers` switchable (module docstring): main takes, after its
    own inputs, f_1..f_n, then (int8 fallback) g_1..g_n, then one flag e for every int4
    embedding table. a8: the int4 layers are W4A8 (their inputs rounded per row).
    `table(take, constants)`: the dequantized int4 table a gather reads in
    the artifact (None: not an int4 table); embeddings are not budgeted, they are int4 in
    every mix, and e = 0 only for the fp32 reference. `windows`: {conv: its weight as the
    artifact computes with it} for the convs stored int8 (`graphopt.w8_conv_ops`), read
    under the same flag e."""
    func = relax.transform.ToNonDataflow()(mod)["main"]
    wanted = {ly.name for ly in layers}  # the same names in the rewritten function
    layers = [ly for ly in find_layers(func) if ly.name in wanted]
    rewriter = _Switch(layers, int4, fallback == "int8", table, bound_constants(func), a8)
    rewriter.windows = {ly.call: windows[ly.name] for ly in find_layers(func)
                        if ly.name in (windows or {})}  # fmt: skip
    body = rewriter.visit_expr(func)
    params = [*func.params, *rewriter.flags, *rewriter.fallback_flags, rewriter.table_flag]
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    new["main"] = relax.Function(params, body.body, body.ret_ty, attrs=func.attrs)
    return relax.transform.ConvertToDataflow()(relax.transform.Normalize()(new))


def _flag(name: str) -> relax.Var:
    return relax.Var(name, relax.TensorType([1], "float32"))


@mutator
class _Switch(PyExprMutator):
    def __init__(self, layers, int4, int8: bool, table, consts: dict, a8: bool = False) -> None:
        super().__init__()
        self.layers, self.int4, self.table, self.consts = layers, int4, table, consts
        self.a8 = a8
        self.flags = [_flag(f"f_{ly.name}") for ly in layers]
        self.fallback_flags = [_flag(f"g_{ly.name}") for ly in layers] if int8 else []
        self.table_flag = _flag("e_tables")
        self.windows: dict = {}  # {conv call: its int8 weight dequantized}

    def _where(self, flag: relax.Var, yes: relax.Expr, no: relax.Expr) -> relax.Expr:
        on = R_op.greater(flag, relax.const(0.5, "float32"))
        return self.builder_.emit(R_op.where(on, yes, no))

    def _int8_rows_2d(self, x: relax.Expr) -> relax.Expr:
        return emit_dynamic_qdq(self.builder_, x, per_row=True)

    def _int8_rows(self, x: relax.Expr) -> relax.Expr:
        """A conv's NCHW input rounded as the int8 matmul of its pixels rounds it: through
        the same [1, B*H*W, C] rows and the int8 flow's own per-row quantize / dequantize."""
        bb = self.builder_
        b, c, h, w = (int(d) for d in x.ty.shape.values)
        rows = bb.emit(R_op.reshape(bb.emit(R_op.permute_dims(x, [0, 2, 3, 1])), [1, b * h * w, c]))
        back = bb.emit(R_op.reshape(emit_dynamic_qdq(bb, rows, per_row=True), [b, h, w, c]))
        return bb.emit(R_op.permute_dims(back, [0, 3, 1, 2]))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        i = next((i for i, ly in enumerate(self.layers) if ly.call.same_as(call)), None)
        window = next((w for c, w in self.windows.items() if c.same_as(call)), None)
        if window is not None:
            x, w = self.visit_expr(call.args[0]), self.visit_expr(call.args[1])
            w = self._where(self.table_flag, relax.const(window), w)
            return relax.Call(call.op, [x, w], call.attrs, call.ty_args)
        if i is None:
            table = self.table(call, self.consts) if self.table is not None else None
            if table is None:
                return super().visit_call_(call)
            original = super().visit_call_(call)
            idx = self.visit_expr(call.args[1])
            int4 = R_op.take(relax.const(table), idx, axis=0, mode=call.attrs.mode)
            return self._where(self.table_flag, self.builder_.emit(int4), original)
        layer = self.layers[i]
        x, w = self.visit_expr(call.args[0]), self.visit_expr(call.args[1])
        q = self.int4[layer.name]
        conv = layer.kind == "conv2d"  # a 1x1 conv: K is axis 1 of its NCHW input
        x4 = x
        if q.act_scale is not None:
            a = q.act_scale.reshape(-1, 1, 1) if conv else q.act_scale
            x4 = self.builder_.emit(R_op.multiply(x, relax.const(a)))
        if self.a8:
            x4 = row_fake_quant(self.builder_, x4, axis=1 if conv else -1)
        if self.fallback_flags:  # int8 fallback: the dynamic per-row matmul flow
            g = self.fallback_flags[i]
            x = self._where(g, self._int8_rows(x) if conv else self._int8_rows_2d(x), x)
            wq, scale = weight_qparams(layer.weight, layer.weight_axis)
            w = self._where(g, relax.const(dequant_weight_np(wq, scale, layer.weight_axis)), w)
        x = self._where(self.flags[i], x4, x)
        dq4 = layer_weight(layer, q.dequantize())
        w = self._where(self.flags[i], relax.const(dq4), w)
        return relax.Call(call.op, [x, w], call.attrs, call.ty_args)


def row_fake_quant(bb: relax.BlockBuilder, x: relax.Expr, axis: int = -1) -> relax.Expr:
    """x rounded as the W4A8 kernels quantize it, in fp32: per row (the values along `axis`,
    the op's K) s = max(max|x|, eps) / 127, clamp(round_half_even(x / s), -128, 127) * s
    (`graphopt.int4_a8_ops`)."""
    amax = bb.emit(R_op.max(R_op.abs(x), axis=axis, keepdims=True))
    s = bb.emit(R_op.divide(R_op.maximum(amax, relax.const(EPS, "float32")), relax.const(QMAX)))
    q = R_op.clip(R_op.round(R_op.divide(x, s)), -128, 127)
    return bb.emit(R_op.multiply(q, s))


class SwitchRunner:
    """The built switchable graph: `run(bits, feed)` -> the model's first output, with the
    layers at `bits` (absent: fp32) and the int4 embedding tables; bits None: the original
    model (fp32 tables too)."""

    def __init__(self, mod: tvm.IRModule, layers: list[Layer], fallback: str, target: Target):
        self.names = [ly.name for ly in layers]
        self.fallback = fallback
        flags = len(layers) * (2 if fallback == "int8" else 1) + 1
        self.graph = FlagGraph(mod, target, flags)

    def run(self, bits: Mapping[str, int] | None, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        chosen, flag = bits or {}, self.graph.flag
        f = [flag(chosen.get(n, 32) == 4) for n in self.names]
        g = [flag(chosen.get(n, 32) == 8) for n in self.names]
        g = g if self.fallback == "int8" else []
        return self.graph(feed, [*f, *g, flag(bits is not None)])


def size_limit(order: Sequence[str], fallback: str, fits: Callable[[dict], bool]) -> int:
    """The highest ladder level whose bits `fits` the size cap (levels only add bytes)."""
    top = len(order) * (2 if fallback == "int8" else 1)
    level = 0
    while level < top and fits(ladder_bits(order, level + 1, fallback)):
        level += 1
    return level


def choose(
    runner: SwitchRunner,
    feeds: Sequence[Mapping[str, np.ndarray]],
    max_drop: float | None,
    *,
    labels: np.ndarray | None = None,
    metric: str = "auto",
    layer_samples: int = 8,
    cost: Mapping[str, float] | None = None,
    fits: Callable[[dict], bool] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> Choice:
    """Sensitivity per layer, then the lowest ladder level within `max_drop` of fp32; `cost`:
    the bytes each layer adds off int4 (the ladder by noise per byte, `ladder_order`); `fits`:
    whether a mix's weights are within the size cap: no level above the last that fits, and
    without `max_drop` that level."""
    clock, names = time.perf_counter(), runner.names
    ref = [runner.run(None, feed) for feed in feeds]
    m = Metric.choose(ref, labels, metric)
    fp32 = m.score(ref, ref)
    rows = _rows(runner, feeds, ref, layer_samples, say)
    order = ladder_order(rows, cost)
    seconds = {"layers": time.perf_counter() - clock}
    clock = time.perf_counter()

    def score(level: int) -> float:
        bits = ladder_bits(order, level, runner.fallback)
        got = m.score(ref, [runner.run(bits, feed) for feed in feeds])
        held = sum(b != 4 for b in bits.values())
        say(f"max-drop: level {level} ({held} of {len(names)} layer(s) off int4) -> {got:.2f}")
        return got

    all_int4 = score(0)
    choice = Choice(order, 0, runner.fallback, rows, {}, m.kind, len(feeds))
    if fits is not None:
        choice.limit = size_limit(order, runner.fallback, fits)
    if max_drop is None:
        choice.level = choice.top
        final = score(choice.level) if choice.level else all_int4
    elif fp32 - all_int4 > max_drop and choice.top > 0:
        choice.level, final = fewest_kept(choice.top, score, fp32, max_drop)
        if choice.limit is not None and choice.level == choice.top:
            final = score(choice.level)  # the cap's level: fewest_kept did not run it
    else:
        final = all_int4
    seconds["search"] = time.perf_counter() - clock
    choice.scores = {"fp32": round(fp32, 4), "all_int4": round(all_int4, 4)}
    choice.scores["final"] = round(final, 4)
    choice.seconds = {k: round(v, 2) for k, v in seconds.items()}
    choice.score_outputs = lambda got: m.score(ref, got)
    return choice


def ladder_order(rows: Sequence[dict], cost: Mapping[str, float] | None = None) -> list[str]:
    """The layers in the order the ladder moves them off int4: by sensitivity (output SQNR
    with only that layer int4, lowest first), or with `cost` (bytes a layer adds when it
    leaves int4) by the output noise it removes per byte, 10^(-SQNR / 10) / cost, highest
    first: under a size goal a small sensitive layer goes before a large one a little more
    sensitive."""
    if cost is None:
        return [r["layer"] for r in sorted(rows, key=lambda r: r["sqnr_db"])]

    def per_byte(r: dict) -> float:
        return 10 ** (-r["sqnr_db"] / 10) / max(float(cost[r["layer"]]), 1.0)

    return [r["layer"] for r in sorted(rows, key=per_byte, reverse=True)]


def _rows(runner: SwitchRunner, feeds, ref, samples: int, say) -> list[dict]:
    """Each layer alone int4 (every other fp32) on `samples` evenly spaced feeds."""
    k = min(samples, len(feeds))
    which = sorted({round(i * (len(feeds) - 1) / max(k - 1, 1)) for i in range(k)})
    ref_k = [ref[i] for i in which]
    meter = Meter(len(runner.names), "int4 sensitivity", say, unit="layers", every=0.5)
    rows = []
    for i, name in enumerate(runner.names):
        got = [runner.run({name: 4}, feeds[j]) for j in which]
        rows.append(
            {
                "layer": name,
                "sqnr_db": round(sqnr_db(np.concatenate(ref_k), np.concatenate(got)), 2),
                "cosine": round(float(cosines(ref_k, got).mean()), 6),
            }
        )
        meter.update(i + 1, f"{name} SQNR {rows[-1]['sqnr_db']} dB")
    return rows
