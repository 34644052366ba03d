"""What the integer kernels compute, per set of flags: the probe graph's constants.

`lower-int8` gives a quantized unit's kernel an epilogue that depends on its neighbours: a
conv / matmul requantizes straight into its consumer's int8 input when every reader of its
output (after bias and relu / clip) is a quantized unit, else it dequantizes to fp32; a
residual join becomes the int8 fixed-point add only under the same condition. Every int8
tensor has one range: the first quantized layer reading it, else the first quantized join
holding it (the `quantize` pass's rule). So the constants of one unit's kernel change with
the other units' flags. `Edges` records, once per probe graph, who reads what; `FlagPlan`
turns a set of flags into every unit's constants with the functions `lower-int8` itself uses
(`graphopt.int8_ops.epilogue_for`, `epilogue_constants`, `add_multipliers`), so the probe
computes the numbers the artifact's kernels compute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from ...binding_graph import BindingGraph, clamp_chain, epilogue_chain
from ...int8_ops import add_multipliers, epilogue_constants, epilogue_for
from ..common.layers import Join, Layer
from .bias_correction import KEY as BIAS_KEY
from .qdq import QRANGE, act_qparams, weight_qparams

JOIN_KEYS = ("input", "input_b", "output")  # a join's ranges entry: a, b, a + b


@dataclass
class Tail:
    """The tensor a unit's kernel writes (after the bias and clamps it absorbs) and who reads
    it: `readers` layers, `holders` (join, key) pairs, `others` any other user (an fp32 op, a
    model output): then the kernel never requantizes."""

    var: relax.Var
    lo: float
    hi: float
    bias: np.ndarray | None = None  # a layer's bias, one value per output channel
    bias_var: relax.Var | None = None  # the var bound to the bias add
    readers: list[int] = field(default_factory=list)
    holders: list[tuple[int, str]] = field(default_factory=list)
    others: bool = False


@dataclass
class Edges:
    """Per unit of a probe graph: its tail; per tensor a layer or join quantizes: its
    possible range sources (layers reading it, then joins holding it)."""

    layer_tails: list[Tail]
    join_tails: list[Tail]
    sources: dict  # tensor (relax.Var) -> (readers, holders)

    def source(self, tensor) -> tuple[list[int], list[tuple[int, str]]]:
        return self.sources.get(tensor, ([], []))


def find_edges(
    func: relax.Function, mod: tvm.IRModule, layers: list[Layer], joins: list[Join], taps: int
) -> Edges:
    """The edges of `func`, whose first `taps` outputs are taps (not users the artifact has)."""
    graph = BindingGraph(func, mod)
    body = func.body.body
    for tap in list(body.fields)[:taps] if isinstance(body, relax.Tuple) else []:
        users = graph.users.get(tap, [])
        if None in users:
            users.remove(None)
    sources: dict = {}
    for i, ly in enumerate(layers):
        sources.setdefault(ly.data, ([], []))[0].append(i)
    for j, jn in enumerate(joins):
        for t, key in zip(jn.tensors, JOIN_KEYS):
            sources.setdefault(t, ([], []))[1].append((j, key))
    layer_tails = []
    for ly in layers:
        shape = ly.call.ty.shape.values
        channels = int(shape[1] if ly.kind == "conv2d" else shape[-1])
        var, bias, lo, hi, _ = epilogue_chain(graph, ly.var, ly.kind, channels, True)
        bias_var = graph.only_user(ly.var) if bias is not None else None
        layer_tails.append(_tail(graph, Tail(var, lo, hi, bias, bias_var), layers, joins))
    join_tails = []
    for jn in joins:
        var, lo, hi, _ = clamp_chain(graph, jn.var, graph.only_user(jn.var), -math.inf, math.inf)
        join_tails.append(_tail(graph, Tail(var, lo, hi), layers, joins))
    return Edges(layer_tails, join_tails, sources)


def _tail(graph: BindingGraph, tail: Tail, layers: list[Layer], joins: list[Join]) -> Tail:
    """`tail` with its readers filled in from the graph's users."""
    users = graph.users.get(tail.var, [])
    tail.others = not users
    for user in users:
        layer = next((i for i, ly in enumerate(layers) if ly.var.same_as(user)), None)
        join = next((j for j, jn in enumerate(joins) if jn.var.same_as(user)), None)
        if layer is not None and layers[layer].data.same_as(tail.var):
            tail.readers.append(layer)
        elif join is not None:
            tail.holders.append((join, "input" if joins[join].call.args[0].same_as(tail.var)
                                 else "input_b"))  # fmt: skip
        else:
            tail.others = True
    return tail


@dataclass(frozen=True)
class LayerConsts:
    """What one quantized layer's kernel computes with (`graphopt.int8_ops`)."""

    s_x: float
    zp_x: float
    corr: np.ndarray  # int32 values
    scale: np.ndarray
    fbias: np.ndarray
    lo: float  # clamp bounds: quantized domain when requantizing, else real
    hi: float
    requant: bool
    zp_o: float = 0.0
    s_o: float = 1.0
    w_sum: np.ndarray | int = 0  # per-channel sum of the int8 weight

    @property
    def centered_corr(self) -> np.ndarray:
        """corr for a sum over (q - zp_x) instead of q: acc + corr is the same int32
        (wrapped to int32 like the kernels' int32 adds)."""
        total = self.corr.astype(np.int64) + int(self.zp_x) * np.asarray(self.w_sum, np.int64)
        return ((total + 2**31) % 2**32 - 2**31).astype(np.int32)


@dataclass(frozen=True)
class JoinConsts:
    """A quantized join: each operand's (scale, zero point); `add` the int8 add op's
    (ma, mb, 2^-shift, zp_o, s_o, lo, hi) when lowered, else None (fp32 add of the
    dequantized operands)."""

    a: tuple[float, float]
    b: tuple[float, float]
    add: tuple[float, ...] | None


class FlagPlan:
    """Constants of every unit for a set of flags (layers, then joins), from the ranges."""

    def __init__(self, layers, joins, edges: Edges, ranges: Mapping[str, dict], settings):
        self.layers, self.joins, self.edges = layers, joins, edges
        self.ranges, self.s = ranges, settings
        self.weights: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.bias_eq: dict[int, np.ndarray] = {}  # equalized producers' biases

    def weight(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(int8 weight, per-channel scale) of layer i, as `quantize` makes them."""
        if i not in self.weights:
            ly = self.layers[i]
            wq, s_w = weight_qparams(ly.weight, ly.weight_axis, self.s.per_channel)
            self.weights[i] = (wq, s_w)
        return self.weights[i]

    def equalize(self, weights: Mapping[str, np.ndarray], biases: Mapping[str, np.ndarray]):
        """Equalized weights and biases by layer name (`equalize.scaled_constants`): the
        int8 weights are then those of the equalized ones, as `quantize` makes them."""
        self.bias_eq = {}
        for i, ly in enumerate(self.layers):
            if ly.name in weights:
                w = weights[ly.name]
                self.weights[i] = weight_qparams(w, ly.weight_axis, self.s.per_channel)
            if ly.name in biases:
                self.bias_eq[i] = np.asarray(biases[ly.name], np.float32).reshape(-1)

    def qparams(self, tensor, flags: Sequence[float]) -> tuple[float, int] | None:
        """The (scale, zero point) `quantize` gives `tensor` for these flags, else None."""
        readers, holders = self.edges.source(tensor)
        n = len(self.layers)
        layer = next((i for i in readers if flags[i] and self.layers[i].name in self.ranges), None)
        if layer is not None:
            return _qparams(self.ranges[self.layers[layer].name]["input"], self.s.act_dtype)
        for j, key in holders:
            entry = self.ranges.get(self.joins[j].name)
            if flags[n + j] and entry is not None:
                return _qparams(entry[key], self.s.act_dtype)
        return None

    def _requant(self, tail: Tail, flags) -> tuple[float, int, str] | None:
        """(scale, zero point, dtype) when the kernel writing `tail` requantizes."""
        n = len(self.layers)
        readers_on = all(flags[i] for i in tail.readers) and all(
            flags[n + j] for j, _ in tail.holders
        )
        if tail.others or not readers_on or self.s.mode != "static":
            return None
        q = self.qparams(tail.var, flags)
        return None if q is None else (q[0], q[1], self.s.act_dtype)

    def layer(self, i: int, flags, correction: np.ndarray | None) -> LayerConsts:
        """Layer i's kernel constants; `correction` is its bias correction (static)."""
        ly, tail = self.layers[i], self.edges.layer_tails[i]
        wq, s_w = self.weight(i)
        channels = wq.shape[ly.weight_axis]
        s_w = np.broadcast_to(np.asarray(s_w, np.float32).reshape(-1), (channels,))
        static = self.s.mode == "static"
        s_x, zp_x = self.qparams(ly.data, flags) if static else (None, 0)
        bias = tail.bias
        bias = self.bias_eq.get(i, bias)
        if correction is not None:
            c = np.asarray(correction, np.float32).reshape(-1)
            bias = -c if bias is None else (bias - c).astype(np.float32)
        requant = self._requant(tail, flags)
        ep, s_out = epilogue_for(tail.lo, tail.hi, requant, not static)
        axes = tuple(a for a in range(wq.ndim) if a != ly.weight_axis % wq.ndim)
        w_sum = wq.astype(np.int64).sum(axis=axes)
        corr, scale, fbias = epilogue_constants(ep, s_x, zp_x, s_w, bias, w_sum, s_out)
        lo, hi = ep.bounds()
        if requant is None:
            return LayerConsts(s_x or 1.0, zp_x, corr, scale, fbias, lo, hi, False, w_sum=w_sum)
        return LayerConsts(s_x, zp_x, corr, scale, fbias, lo, hi, True, ep.zp, requant[0], w_sum)

    def join(self, j: int, flags) -> JoinConsts:
        """Join j's operand parameters and, when `lower-int8` makes it the add op, its
        fixed-point constants (the same `add_multipliers`)."""
        jn, tail = self.joins[j], self.edges.join_tails[j]
        a = self.qparams(jn.call.args[0], flags) or (1.0, 0)
        b = self.qparams(jn.call.args[1], flags) or (1.0, 0)
        requant = self._requant(tail, flags)
        if requant is None:
            return JoinConsts(a, b, None)
        ep, s_o = epilogue_for(tail.lo, tail.hi, requant, False)
        ma, mb, shift = add_multipliers(a[0], b[0], s_o)
        lo, hi = ep.bounds()
        return JoinConsts(a, b, (ma, mb, 2.0**-shift, ep.zp, s_o, lo, hi))


def _qparams(lohi: Sequence[float], act_dtype: str) -> tuple[float, int]:
    """(scale, zero point) of a range, as `quantize` computes them."""
    qmin, qmax = QRANGE[act_dtype]
    q = act_qparams(*lohi, act_dtype)
    return float(np.float32(q.scale)), int(np.clip(q.zero_point, qmin, qmax))


def correction_of(layer: Layer, ranges: Mapping[str, dict], settings) -> np.ndarray | None:
    """A layer's bias correction (static mode), else None."""
    if settings.mode != "static":
        return None
    corr = ranges.get(layer.name, {}).get(BIAS_KEY)
    return None if corr is None else np.asarray(corr, np.float32)
