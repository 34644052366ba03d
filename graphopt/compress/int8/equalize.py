"""Activation equalization into depthwise convs: small channels get a share of the int8 range.

A depthwise conv's input is quantized with one scale for all its channels; after batch-norm
folding (MobileNets) some channels span [0, 6] and others [0, 0.05], which get two or three
int8 levels. For a producer layer P (conv + bias [+ relu | relu6]) whose output feeds only a
depthwise layer D, scaling P's output channel c by k_c >= 1 and D's weights of channel c by
1 / k_c leaves the fp32 math unchanged (relu is positively homogeneous) except where the scaled
channel reaches the relu6 bound; and the quantizer clips the tensor at its range `hi` anyway,
so with k_c = hi / max_c (max_c: the channel's calibrated maximum), a channel is clipped at its
own calibrated maximum instead of at `hi`: a per-channel range where the kernels allow only one.
Both weights are quantized per output channel, so the scales cost them no precision. The
`equalize` pass (passes/equalize.py) applies the scales calibration wrote into the ranges
file. This is the activation half of cross-layer equalization (Nagel et al. 2019); relu6
rules out the weight-range half, which per-channel weights do not need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ... import _tvm
from ..common.layers import Layer, find_layers

KEY = "equalize"  # ranges-file entry of the depthwise layer D: one k per input channel
MAX_K = 16.0  # cap: a channel that never fires is not worth stretching further


class ChannelMax:
    """Per-channel max of a conv layer's NCHW input over the samples."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        m = np.asarray(x).max(axis=(0, 2, 3)) if np.ndim(x) == 4 else None
        if m is not None:
            self.value = m if self.value is None else np.maximum(self.value, m)


@dataclass(frozen=True)
class Pair:
    producer: Layer
    consumer: Layer  # depthwise
    bias: relax.Call  # the producer's bias add
    bias_const: relax.Expr  # its constant (replaced by the scaled one)
    clamp: tuple[float, float]  # relu / clip bounds after the bias (lo 0 required)


def find_pairs(mod: tvm.IRModule) -> list[Pair]:
    """Producer -> bias -> relu|clip(0, b) -> depthwise consumer, every link single-use."""
    from ...binding_graph import BindingGraph, epilogue_chain

    func = mod["main"]
    graph = BindingGraph(func, mod)
    layers = find_layers(func)
    by_data = {ly.data: ly for ly in layers if isinstance(ly.data, relax.Var)}
    pairs = []
    for p in layers:
        if p.kind != "conv2d":
            continue
        channels = p.weight_shape[0]
        tail, bias, lo, hi, _ = epilogue_chain(graph, p.var, p.kind, channels, True)
        users = graph.users.get(tail, [])
        d = by_data.get(tail)
        if bias is None or lo != 0.0 or d is None or len(users) != 1 or not users[0].same_as(d.var):
            continue
        # Depthwise consumers only: a groups=1 consumer's weight columns would shrink by k
        # (sqrt-shared stretch measured worse: MobileNetV2 17.5 -> 16.9 dB, EfficientNet-Lite0
        # 19.1 -> 11.3 dB logit SQNR).
        if int(d.call.attrs.groups) != channels or d.weight_shape[:2] != [channels, 1]:
            continue
        add = graph.value[graph.only_user(p.var)]
        other = graph.resolve(add.args[1] if add.args[0].same_as(p.var) else add.args[0])
        if isinstance(other, tvm.ir.GenericConst):
            pairs.append(Pair(p, d, add, other, (lo, hi)))
    return pairs


def equalize_scales(pair: Pair, channel_max: np.ndarray, hi: float) -> np.ndarray:
    """k per channel: stretch each channel's calibrated max to the tensor's range top `hi`."""
    m = np.asarray(channel_max, np.float64)
    k = np.where(m > 0, hi / np.maximum(m, 1e-30), MAX_K)
    k = np.clip(k, 1.0, MAX_K)
    if pair.clamp[1] < math.inf:  # relu6: never push a channel's max past the bound
        k = np.minimum(k, np.where(m > 0, pair.clamp[1] / np.maximum(m, 1e-30), MAX_K))
        k = np.maximum(k, 1.0)
    return k.astype(np.float32)


def scaled_module(mod: tvm.IRModule, scales: Mapping[str, np.ndarray]) -> tvm.IRModule:
    """`mod` with the scales {depthwise layer: k} applied (calibration's second round)."""
    plan = {p.consumer.name: (p, scales[p.consumer.name]) for p in find_pairs(mod)}
    plan = {n: v for n, v in plan.items() if n in scales}
    if not plan:
        return mod
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    new["main"] = _Scale(plan).visit_expr(mod["main"])
    return relax.transform.Normalize()(new)


def scaled_constants(
    pairs: list[Pair], scales: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(weights, biases) by layer name: what equalization by `scales` makes of the pairs'
    constants (producer weight and bias times k, depthwise weight over k). `scaled_module`
    and the int8 probe graph both use it, so both hold the same numbers."""
    # A layer could be both a consumer and a producer: factors of one weight multiply.
    weights: dict = {}  # layer name -> (layer, factor [O, I or 1, 1, 1])
    biases: dict[str, np.ndarray] = {}
    for pair in pairs:
        k = scales.get(pair.consumer.name)
        if k is None:
            continue
        _scale(weights, pair.producer, k.reshape(-1, 1, 1, 1))
        _scale(weights, pair.consumer, 1 / k.reshape(-1, 1, 1, 1))
        b = _tvm.constant_value(pair.bias_const)
        biases[pair.producer.name] = (b * _bias_shape(k, b)).astype(np.float32)
    scaled = {
        name: (np.asarray(layer.weight, np.float64) * factor).astype(np.float32)
        for name, (layer, factor) in weights.items()
    }
    return scaled, biases


@mutator
class _Scale(PyExprMutator):
    def __init__(self, plan: Mapping) -> None:
        super().__init__()
        pairs = [pair for pair, _k in plan.values()]
        weights, biases = scaled_constants(pairs, {n: k for n, (_p, k) in plan.items()})
        layers = {ly.name: ly for pair in pairs for ly in (pair.producer, pair.consumer)}
        self.edits = []  # (original call, arg index, new constant)
        for pair in pairs:
            add = pair.bias
            i = 1 if add.args[0].same_as(pair.producer.var) else 0
            self.edits.append((add, i, relax.const(biases[pair.producer.name])))
        for name, w in weights.items():
            self.edits.append((layers[name].call, 1, relax.const(w)))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        for orig, i, value in self.edits:
            if orig.same_as(call):
                args = [self.visit_expr(a) for a in call.args]
                args[i] = value
                return relax.Call(call.op, args, call.attrs, call.ty_args)
        return super().visit_call_(call)


def _scale(weights: dict, layer: Layer, factor: np.ndarray) -> None:
    old = weights.get(layer.name, (layer, 1.0))[1]
    weights[layer.name] = (layer, old * factor.astype(np.float64))


def _bias_shape(k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k laid out like the bias constant b ([C], [C,1,1] or [1,C,1,1]: C along its one
    non-unit axis)."""
    shape = [1] * b.ndim
    axis = next((i for i, d in enumerate(b.shape) if d == k.size), b.ndim - 1)
    shape[axis] = k.size
    return k.reshape(shape)
