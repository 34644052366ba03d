"""Attention heads that can be removed: Q/K/V projections split into heads, the attention,
the heads merged back and one output projection.

    q, k, v = x Wq + bq, x Wk + bk, x Wv + bv     three matmul layers reading one tensor
    reshape to [B, S, H, D] each                  (the split: channel h*D + d is head h)
    permutes, scaling, scores, mask, softmax,     ops that keep head h at head h: the head
    probabilities x values                        axis moves only with permute_dims, other
                                                  operands are constants or tensors of size 1
                                                  on it (the mask)
    reshape [B, S, H, D] -> [B, S, H*D], then y = ctx Wo  (the merge and the consumer)

Head h is then columns h*D..h*D+D-1 of Wq, Wk, Wv and their biases, and the same rows of Wo:
dropping it slices those, the split and merge reshapes take the smaller head count, and the
output projection is refit like any consumer (its input's channels are the heads' channels).
Anything else reading a tensor of the region (an attention-probabilities output, a second
consumer) makes it not prunable.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from ..common.layers import Layer, bound_constants, find_layers
from .chains import Operands, _channelwise, find_regions, producers

HEAD_OPS = {
    "relax.permute_dims",
    "relax.matmul",
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.nn.softmax",
    "relax.isnan",
    "relax.where",
    "relax.astype",
    "relax.exp",
}


@dataclass(frozen=True)
class HeadRegion:
    """The heads of one attention: Q/K/V producers, the output projection consumer."""

    producer: Layer  # Q (names the region)
    consumer: Layer
    qkv: tuple[Layer, ...]
    inner: tuple[relax.Var, ...]  # channel-wise ops between a projection and its split (bias)
    splits: tuple[relax.Var, ...]
    merge: relax.Var
    heads: int
    head_dim: int
    axis: int = -1  # the consumer input's channel axis

    @property
    def name(self) -> str:
        return f"heads_{self.producer.name}"

    @property
    def channels(self) -> int:
        return self.heads * self.head_dim

    @property
    def bindings(self) -> tuple[relax.Var, ...]:
        return self.inner


def _shape(expr) -> list[int] | None:
    ty = getattr(expr, "ty", None)
    values = getattr(getattr(ty, "shape", None), "values", None)
    if values is None or not all(isinstance(d, tvm.tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def find_heads(mod: tvm.IRModule) -> list[HeadRegion]:
    """Every prunable attention of `mod`'s main."""
    func = mod["main"]
    layers = [ly for ly in find_layers(func) if ly.kind == "matmul"]
    bindings = [b for block in func.body.blocks for b in block.bindings]
    outputs = set(relax.analysis.free_vars(func.body.body))
    ops = Operands(mod, bound_constants(func))
    by_data: dict = {}
    for ly in layers:
        by_data.setdefault(ly.data, []).append(ly)
    found = []
    for group in by_data.values():
        for i in range(len(group) - 2):
            region = _trace(group[i : i + 3], bindings, layers, outputs, ops)
            if region is not None:
                found.append(region)
    return found


def _trace(qkv, bindings, layers, outputs: set, ops: Operands) -> HeadRegion | None:
    """The attention fed by the three projections `qkv`, or None (module docstring)."""
    by_var = {ly.var: ly for ly in layers}
    c = qkv[0].weight_shape[1]
    if any(ly.weight_shape[1] != c for ly in qkv):
        return None
    chan = {ly.var for ly in qkv}  # [.., C] tensors, channel h*D + d
    head: dict = {}  # [.., H, D]-derived tensors: var -> head axis
    inner, splits, merge, consumer, hd = [], [], None, None, None
    start = min(i for i, b in enumerate(bindings) if b.var in chan)
    for b in bindings[start:]:
        reads = [v for v in relax.analysis.free_vars(b.value) if v in chan or v in head]
        if not reads or b.var in chan:
            continue
        if consumer is not None:
            return None  # something reads the region after its consumer
        q = by_var.get(b.var)
        if q is not None and merge is not None and q.data == merge and reads == [merge]:
            consumer = q
            continue
        name, args = ops.op_and_args(b.value)
        shape = _shape(b.var)
        if any(v in chan for v in reads) and not all(v in chan for v in reads):
            return None  # channels and heads mixed
        if all(v in chan for v in reads) and name == "relax.reshape":
            if shape is None or len(shape) != 4 or shape[2] * shape[3] != c:
                return None
            if hd not in (None, shape[3]):
                return None
            hd = shape[3]
            splits.append(b.var)
            head[b.var] = 2
        elif all(v in chan for v in reads):
            if not _channelwise(b.value, list(chan), ops, len(shape or []), -1, c):
                return None
            chan.add(b.var)
            inner.append(b.var)
        elif name == "relax.reshape" and merge is None and head.get(args[0]) == 2:
            src = _shape(args[0])
            if shape is None or src is None or shape != [*src[:2], src[2] * src[3]]:
                return None
            merge = b.var
            head[b.var] = None
        else:
            axis = _head_axis(name, b.value, args, head, shape)
            if axis is None:
                return None
            head[b.var] = axis
    if consumer is None or len(splits) != 3 or any(v in outputs for v in [*chan, *head]):
        return None
    return HeadRegion(qkv[0], consumer, tuple(qkv), tuple(inner), tuple(splits), merge, c // hd, hd)


def _head_axis(name, call, args, head: dict, shape) -> int | None:
    """The head axis of a head-preserving op's result, or None when the op mixes heads."""
    if name not in HEAD_OPS or shape is None:
        return None
    region = [a for a in args if a in head]
    axes = {head[a] for a in region}
    if len(axes) != 1 or None in axes:
        return None
    axis = axes.pop()
    if name == "relax.permute_dims":
        return [int(a) for a in call.attrs.axes].index(axis)
    if name == "relax.nn.softmax" and int(call.attrs.axis) % len(shape) == axis:
        return None
    if name == "relax.matmul" and (len(region) != 2 or axis >= len(shape) - 2):
        return None
    for a in args:  # other operands: size 1 on the head axis (a mask), or of lower rank
        if a in head:
            continue
        s = _shape(a)
        if s is None and not isinstance(a, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
            return None
        offset = len(shape) - len(s or [])
        if s and axis >= offset and s[axis - offset] != 1:
            return None
    return axis


def find_all(mod: tvm.IRModule, kinds: str = "all") -> list:
    """Channel regions and head regions (`kinds`: "channels", "heads" or "all"), no layer cut
    on both weight axes (a head's projection consuming a channel region, or the reverse)."""
    channels = find_regions(mod) if kinds in ("all", "channels") else []
    heads = find_heads(mod) if kinds in ("all", "heads") else []
    consumers = {r.consumer.var for r in channels}
    cut = {p.var for r in channels for p in producers(r)}
    heads = [
        h
        for h in heads
        if not any(ly.var in consumers for ly in h.qkv) and h.consumer.var not in cut
    ]
    return [*channels, *heads]


def units(region) -> int:
    """Channels that leave together: a head's, or one."""
    return getattr(region, "head_dim", 1)
