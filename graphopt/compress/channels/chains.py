"""Hidden channels that can be removed: a producer layer, channel-wise ops, one consumer layer.

    h = P(x)           conv2d / matmul with a constant weight: its output channels
    h' = f(h, ...)     elementwise ops whose other operands are constants (scalars, or one
                       value per channel), depthwise convs: channel k stays channel k
    y = Q(h')          matmul, or conv of one group (1x1 or KxK, any stride and padding):
                       h' is its reduction dimension (a KxK conv's: its channels' windows)

Channel k of h can be dropped from P's weight, from every per-channel constant and depthwise
filter in between, and from Q's weight, when nothing else reads any tensor of the region:
a transformer's FFN (matmul, bias, GELU, matmul) and MobileNetV2's expansion channels (1x1
conv, relu6, depthwise conv, relu6, 1x1 projection) and a ResNet block's inner channels
(3x3 or 1x1 conv, relu, 3x3 conv) are such regions. Channels that several
producers share through a concatenation are `concat.py`'s regions; residual sums are left
alone (every layer writing into the sum would lose the channel together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ...binding_graph import minmax_kernel
from ..common.layers import Layer, bound_constants, find_layers

CHANNELWISE = {
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.maximum",
    "relax.minimum",
    "relax.clip",
    "relax.erf",
    "relax.tanh",
    "relax.sigmoid",
    "relax.exp",
    "relax.sqrt",
    "relax.nn.relu",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.nn.silu",
}


@dataclass(frozen=True)
class Region:
    """One prunable set of hidden channels."""

    producer: Layer
    consumer: Layer
    bindings: tuple[relax.Var, ...]  # the region's variables from P's output to Q's input
    channels: int
    axis: int  # channel axis of the region's tensors (-1 after a matmul, 1 in NCHW)

    @property
    def name(self) -> str:
        return self.producer.name


def _bindings(func: relax.Function) -> list[relax.VarBinding]:
    return [b for block in func.body.blocks for b in block.bindings]


def channel_constant(value: np.ndarray, ndim: int, axis: int, channels: int) -> bool:
    """A constant operand that broadcasts per channel (or is a scalar)."""
    shape = list(np.shape(value))
    if len(shape) > ndim:
        return False
    shape = [1] * (ndim - len(shape)) + shape
    axis = axis % ndim
    return all(d == 1 for i, d in enumerate(shape) if i != axis) and shape[axis] in (1, channels)


def _depthwise(call: relax.Call, weight, channels: int) -> bool:
    if call.op.name != "relax.nn.conv2d" or not isinstance(weight, tvm.ir.GenericConst):
        return False
    a = call.attrs
    shape = [int(d) for d in weight.ty.shape.values]
    return int(a.groups) == channels and shape[0] == channels and shape[1] == 1


def _consumer_ok(layer: Layer) -> bool:
    """Q reduces over all the hidden channels: a matmul, or a conv of one group in NCHW."""
    if layer.kind == "matmul":
        return True
    a = layer.call.attrs
    return int(a.groups) == 1 and a.data_layout == "NCHW" and a.kernel_layout == "OIHW"


def taps(layer: Layer) -> int:
    """Weight rows per input channel: a conv's window (KH x KW), else 1."""
    if layer.kind != "conv2d":
        return 1
    return int(np.prod(layer.weight_shape[2:]))


def window_rows(channels: np.ndarray, per_channel: int) -> np.ndarray:
    """The rows of [C x taps, N] (`as_kn`'s conv layout) that belong to `channels`."""
    channels = np.asarray(channels, np.int64)
    return (channels[:, None] * per_channel + np.arange(per_channel)).ravel()


def find_regions(mod: tvm.IRModule) -> list:
    """Every prunable hidden-channel region of `mod`'s main: single-producer regions in
    binding order of the producer, then concatenations' (`concat.py`)."""
    func = mod["main"]
    layers = find_layers(func)
    by_var = {ly.var: ly for ly in layers}
    bindings = _bindings(func)
    position = {b.var: i for i, b in enumerate(bindings)}
    outputs = set(relax.analysis.free_vars(func.body.body))
    consts = bound_constants(func)
    from .concat import find_concat_regions

    ops = Operands(mod, consts)
    regions: list = []
    for p in layers:
        if p.kind == "conv2d" and int(p.call.attrs.groups) != 1:
            continue
        later = bindings[position[p.var] + 1 :]
        region = _trace(p, later, by_var, outputs, ops)
        if region is not None:
            regions.append(region)
    regions += find_concat_regions(mod, layers, ops)
    # a layer is producer of one region or consumer of another, never both: a bottleneck
    # (MobileNetV2's projection feeding the next expansion directly) would need both of its
    # weight's axes cut; the expansion regions around it hold most multiply-adds. In a
    # ResNet bottleneck (1x1, 3x3, 1x1) the first region (into the 3x3) is kept, the second
    # (out of it) dropped: each costs the same multiply-adds a channel
    consumers = {r.consumer.var for r in regions}
    return [r for r in regions if not any(p.var in consumers for p in producers(r))]


def producers(region) -> list[Layer]:
    """The layers whose output channels a region removes: one, or a concatenation's."""
    branches = getattr(region, "branches", None)
    return [b.producer for b in branches] if branches else [region.producer]


def _trace(p: Layer, later, by_var, outputs: set, ops: Operands) -> Region | None:
    """The region from producer `p` (bindings after it in order, so every operand of a
    binding is decided before it), or None when its channels escape or no consumer ends it."""
    axis = 1 if p.kind == "conv2d" else -1
    channels = p.weight_shape[0] if p.kind == "conv2d" else p.weight_shape[1]
    ndim = len(p.call.ty.shape.values)
    found = trace_forward(p.var, (axis, channels, ndim), later, by_var, outputs, ops)
    if found is None:
        return None
    region, consumer = found
    return Region(p, consumer, tuple(region), channels, axis)


def trace_forward(start, geometry, later, by_var, outputs: set, ops: Operands):
    """([start, the channel-wise bindings after it], the consumer layer) when `start`'s
    channels (geometry: axis, channels, ndim) reach exactly one consumer and nothing else,
    else None. `later`: the bindings after `start`, in order."""
    axis, channels, ndim = geometry
    region, consumer = [start], None
    for b in later:
        reads = [v for v in relax.analysis.free_vars(b.value) if v in region]
        if not reads:
            continue
        q = by_var.get(b.var)
        if q is not None and q.data in region and len(reads) == 1 and _consumer_ok(q):
            if consumer is not None or q.data != region[-1]:
                return None  # two consumers, or the consumer reads an inner tensor
            consumer = q
            continue
        if consumer is not None or not _channelwise(b.value, region, ops, ndim, axis, channels):
            return None
        region.append(b.var)
    if consumer is None or any(v in outputs for v in region):
        return None
    return region, consumer


@dataclass(frozen=True)
class Operands:
    mod: tvm.IRModule
    consts: dict  # variables bound to constants

    def op_and_args(self, value) -> tuple[str | None, list]:
        """The op name and operands of a call, with the importer's Clip kernels (call_tir of
        a one-block max / min against a scalar) read as relax.maximum / relax.minimum."""
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return None, []
        name, args = value.op.name, list(value.args)
        if name == "relax.call_tir" and isinstance(args[1], relax.Tuple):
            kind = minmax_kernel(self.mod[args[0]])
            if kind is None:
                return None, []
            name, args = f"relax.{kind}imum", list(args[1].fields)
        return name, args


def _channelwise(value, region: list, ops: Operands, ndim: int, axis: int, channels: int) -> bool:
    """`value` keeps channel k at channel k: an elementwise op of region tensors and
    per-channel constants, or a depthwise conv of a region tensor."""
    name, args = ops.op_and_args(value)
    if name == "relax.nn.conv2d":
        weight = ops.consts.get(args[1], args[1])
        return args[0] in region and _depthwise(value, weight, channels)
    if name not in CHANNELWISE or len(value.ty.shape.values) != ndim:
        return False
    for arg in args:
        if arg in region:
            continue
        const = ops.consts.get(arg, arg)
        if isinstance(const, tvm.ir.GenericConst):
            if not channel_constant(const.value.numpy(), ndim, axis, channels):
                return False
            continue
        if isinstance(arg, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):  # clip's bounds (TVM 0.27)
            continue
        return False
    return True
