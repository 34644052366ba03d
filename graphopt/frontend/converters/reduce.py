"""Reductions whose `axes` is a run-time input (the opset-18 form; ReduceSum since 13).

TVM's converters need constant axes. Here the reduced dims are chosen at run time: each dim
is reduced with keepdims and the reduced value broadcast back where the dim is named, then
one slice keeps index 0 of the reduced dims and a reshape drops them when keepdims=0. Every
reduction here composes dim by dim (a mean of equal-sized means is the mean; log-sum-exp
nests), so the result equals the one-shot reduction. Constant axes stay on TVM's path.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from . import converter
from ._util import axis_flags, i64, is_const, static_shape, to_shape

_OPS = {
    "ReduceSum": 13,
    "ReduceSumSquare": 18,
    "ReduceMean": 18,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceProd": 18,
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceLogSum": 18,
    "ReduceLogSumExp": 18,
}
_PRE = {
    "ReduceL1": relax.op.abs,
    "ReduceL2": lambda x: relax.op.multiply(x, x),
    "ReduceSumSquare": lambda x: relax.op.multiply(x, x),
}
_POST = {"ReduceL2": relax.op.sqrt, "ReduceLogSum": relax.op.log}


def _step(op: str, bb: relax.BlockBuilder, y, d: int):
    """Reduce one dim, keeping it (size 1)."""
    if op == "ReduceLogSumExp":
        top = bb.normalize(relax.op.max(y, [d], keepdims=True))
        total = relax.op.sum(relax.op.exp(relax.op.subtract(y, top)), [d], keepdims=True)
        return bb.normalize(relax.op.add(relax.op.log(total), top))
    fn = {
        "ReduceMean": relax.op.mean,
        "ReduceMax": relax.op.max,
        "ReduceMin": relax.op.min,
        "ReduceProd": relax.op.prod,
    }.get(op, relax.op.sum)
    return bb.normalize(fn(y, [d], keepdims=True))


def _apply(fns: dict, op: str, bb, y):
    return bb.normalize(fns[op](y)) if op in fns else y


@converter(*_OPS)
def reduce_runtime_axes(bb, op, inputs, attrs, opset):
    axes = inputs[1] if len(inputs) > 1 else None
    if opset < _OPS[op] or axes is None or is_const(axes):
        return None
    x = inputs[0]
    shape, axes_shape = static_shape(x), static_shape(axes)
    if shape is None or axes_shape is None:
        return None
    keepdims = attrs.get("keepdims", 1)
    if axes_shape[0] == 0:  # known empty: no-op, or every dim
        if attrs.get("noop_with_empty_axes", 0):
            return x
        y = _apply(_PRE, op, bb, x)
        for d in range(len(shape)):
            y = _step(op, bb, y, d)
        y = _apply(_POST, op, bb, y)
        return y if keepdims else relax.op.reshape(y, [])
    flags = axis_flags(bb, axes, len(shape))
    is_bool = x.ty.dtype == "bool"  # TVM's max/min have no bool kernel: reduce as uint8
    y = _reduce_flagged(bb, op, relax.op.astype(x, "uint8") if is_bool else x, shape, flags)
    y = relax.op.astype(y, "bool") if is_bool else y
    # ONNX axes name distinct dims, so the output rank is known.
    return y if keepdims else _drop_flagged(bb, y, shape, flags, len(shape) - axes_shape[0])


def _reduce_flagged(bb, op, x, shape, flags):
    rank = len(shape)
    y, current = _apply(_PRE, op, bb, x), list(shape)
    for d in range(rank):
        reduced = _step(op, bb, y, d)
        if current[d] == 0:  # an empty dim, if reduced, yields the reduction's identity
            y, current[d] = reduced, 1
            continue
        flag = bb.normalize(relax.op.take(flags, i64(d), axis=0))
        y = bb.normalize(relax.op.where(flag, relax.op.broadcast_to(reduced, current), y))
    y = _apply(_POST, op, bb, y)
    end = bb.normalize(relax.op.where(flags, i64(np.ones(rank)), i64(shape)))
    return bb.normalize(
        relax.op.dynamic_strided_slice(y, i64(np.zeros(rank)), end, i64(np.ones(rank)))
    )


def _drop_flagged(bb, y, shape, flags, out_rank):
    """Reshape to the dims that were not reduced (which ones is known only at run time)."""
    if out_rank == 0:
        return relax.op.reshape(y, [])
    rank = len(shape)
    keep = bb.normalize(relax.op.astype(relax.op.logical_not(flags), "int64"))
    pos = relax.op.subtract(relax.op.cumsum(keep, axis=0), i64(1))
    slot = relax.op.equal(relax.op.reshape(pos, [1, rank]), i64(np.arange(out_rank)[:, None]))
    picked = relax.op.multiply(relax.op.astype(slot, "int64"), relax.op.reshape(keep, [1, rank]))
    new_shape = relax.op.sum(relax.op.multiply(picked, i64(np.array(shape)[None, :])), [1])
    return relax.op.reshape(y, to_shape(bb, bb.normalize(new_shape), out_rank, "reduced"))
