"""Hidden channels shared through a concatenation: several producers, one consumer.

    h_i = f_i(P_i(x_i))          branch i: a producer layer, then channel-wise ops (chains.py)
    c   = concat(h_1, .., h_n)   along the channel axis
    c'  = g(c, ...)              channel-wise ops
    y   = Q(c')                  one consumer (a matmul or a 1x1 conv)

Channel k of c is channel k - offset_i of the branch i it falls in: dropping it slices P_i's
weight, branch i's per-channel constants and depthwise filters, and Q's weight rows, so the
channels of all branches are chosen together on Q's inputs like one region's (SqueezeNet's
fire modules: a 1x1 and a 3x3 expansion concatenated and read by the next squeeze conv).
A branch that keeps no channel leaves the concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from ..common.layers import Layer
from .chains import Operands, _channelwise, trace_forward


@dataclass(frozen=True)
class Branch:
    producer: Layer
    offset: int  # its first channel in the concatenation
    channels: int
    bindings: tuple[relax.Var, ...]  # the producer's variable, then its channel-wise ops


@dataclass(frozen=True)
class ConcatRegion:
    branches: tuple[Branch, ...]
    consumer: Layer
    bindings: tuple[relax.Var, ...]  # the concatenation, then the channel-wise ops after it
    channels: int
    axis: int

    @property
    def name(self) -> str:
        return f"concat_{self.branches[0].producer.name}"

    def local_keep(self, keep, branch: Branch) -> np.ndarray:
        """The kept channels of one branch, numbered in the branch."""
        k = np.asarray(keep)
        return k[(k >= branch.offset) & (k < branch.offset + branch.channels)] - branch.offset


def find_concat_regions(mod, layers: list[Layer], ops: Operands) -> list[ConcatRegion]:
    """Every concatenation whose operands each come from one producer through channel-wise
    ops read by nothing else, and whose result reaches one consumer."""
    func = mod["main"]
    bindings = [b for block in func.body.blocks for b in block.bindings]
    by_var = {ly.var: ly for ly in layers}
    bound = {b.var: b.value for b in bindings}
    readers: dict = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            readers[v] = readers.get(v, 0) + 1
    outputs = set(relax.analysis.free_vars(func.body.body))
    found = []
    for i, b in enumerate(bindings):
        name, args = ops.op_and_args(b.value)
        if name != "relax.concat" or not isinstance(args[0], relax.Tuple):
            continue
        if len(set(args[0].fields)) != len(args[0].fields):
            continue  # one tensor concatenated twice: its channels sit at two offsets
        ndim = len(b.value.ty.shape.values)
        axis = int(b.value.attrs.axis) % ndim
        branches, offset = [], 0
        for field in args[0].fields:
            br = _branch(field, offset, (axis, ndim), by_var, bound, readers, ops)
            if br is None or any(v in outputs for v in br.bindings):
                break
            branches.append(br)
            offset += br.channels
        if len(branches) != len(args[0].fields):
            continue
        geometry = (1 if axis == 1 else -1, offset, ndim)
        traced = trace_forward(b.var, geometry, bindings[i + 1 :], by_var, outputs, ops)
        if traced is not None:
            chain, consumer = traced
            found.append(ConcatRegion(tuple(branches), consumer, tuple(chain), offset, geometry[0]))
    return found


def _branch(var, offset: int, geometry, by_var, bound, readers, ops: Operands) -> Branch | None:
    """The branch ending at concatenation operand `var`: back through single-reader
    channel-wise bindings to a producer layer whose channels are the concatenation's axis."""
    axis, ndim = geometry
    chain = []
    while var not in by_var:
        value = bound.get(var)
        if value is None or readers.get(var, 0) != 1:
            return None
        inputs = [v for v in relax.analysis.free_vars(value) if v not in ops.consts]
        if len(inputs) != 1:
            return None
        chain.insert(0, var)
        var = inputs[0]
    p = by_var[var]
    if readers.get(var, 0) != 1 or not _producer_ok(p, axis, ndim):
        return None
    channels = p.weight_shape[0] if p.kind == "conv2d" else p.weight_shape[1]
    region = [p.var]
    for v in chain:
        region_axis = 1 if axis == 1 else -1
        if not _channelwise(bound[v], region, ops, ndim, region_axis, channels):
            return None
        region.append(v)
    return Branch(p, offset, channels, tuple(region))


def _producer_ok(p: Layer, axis: int, ndim: int) -> bool:
    if p.kind == "conv2d":
        return axis == 1 and int(p.call.attrs.groups) == 1
    return axis == ndim - 1
