"""Pad whose `pads` is a run-time input (every mode; negative pads crop).

TVM's converter needs constant pads. Here each padded dim is gathered through a run-time
index map (output position - leading pad, then clamped, reflected or wrapped into the input
as the mode says) and, in constant mode, positions outside the input take the pad value.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from . import converter
from ._util import const_value, i64, is_const, normalized_axes, static_shape, to_shape


def _source_index(op, src, n: int, begin, end, mode: str):
    """Input index read by each output position; src = position - leading pad.

    Negative pads crop first; edge, reflect and wrap then work within the cropped range.
    """
    if mode == "constant":
        return op.clip(src, 0, n - 1)
    zero = i64(0)
    lo = op.maximum(op.negative(begin), zero)
    length = op.subtract(op.subtract(i64(n), lo), op.maximum(op.negative(end), zero))
    rel = op.subtract(src, lo)
    if mode == "wrap":
        rel = op.floor_mod(rel, length)
    elif mode == "reflect" and n > 1:
        period = op.multiply(op.subtract(length, i64(1)), i64(2))
        m = op.floor_mod(rel, op.maximum(period, i64(1)))
        rel = op.where(op.greater_equal(m, length), op.subtract(period, m), m)
    else:  # edge
        rel = op.minimum(op.maximum(rel, zero), op.subtract(length, i64(1)))
    return op.add(rel, lo)


@converter("Pad")
def pad_runtime_pads(bb, op, inputs, attrs, opset):
    x, pads = inputs[0], inputs[1] if len(inputs) > 1 else None
    value = inputs[2] if len(inputs) > 2 else None
    axes_in = inputs[3] if len(inputs) > 3 else None
    shape = static_shape(x)
    if opset < 11 or pads is None or is_const(pads) or shape is None:
        return None
    rank, mode = len(shape), attrs.get("mode", b"constant").decode()
    pads = bb.normalize(relax.op.astype(pads, "int64"))
    if axes_in is None:
        axes = list(range(rank))
    elif is_const(axes_in):
        axes = [int(a) % rank for a in const_value(axes_in)]
    else:
        pads, axes = _pads_for_every_dim(bb, pads, axes_in, rank), list(range(rank))
    begins = relax.op.strided_slice(pads, [0], [0], [len(axes)])
    ends = relax.op.strided_slice(pads, [0], [len(axes)], [2 * len(axes)])
    lengths = relax.op.add(relax.op.add(i64([shape[a] for a in axes]), begins), ends)
    out_dims = to_shape(bb, bb.normalize(lengths), len(axes), "padded").values
    y = x
    for i, (axis, n) in enumerate(zip(axes, (shape[a] for a in axes))):
        ones = bb.normalize(relax.op.ones(relax.ShapeExpr([out_dims[i]]), "int64"))
        position = relax.op.subtract(relax.op.cumsum(ones, axis=0), i64(1))
        begin = bb.normalize(relax.op.take(pads, i64(i), axis=0))
        end = bb.normalize(relax.op.take(pads, i64(i + len(axes)), axis=0))
        src = bb.normalize(relax.op.subtract(position, begin))
        index = _source_index(relax.op, src, n, begin, end, mode)
        y = bb.normalize(relax.op.take(y, index, axis=axis))
        if mode == "constant":
            inside = relax.op.logical_and(
                relax.op.greater_equal(src, i64(0)), relax.op.less(src, i64(n))
            )
            bcast = [out_dims[i] if d == axis else 1 for d in range(rank)]
            inside = relax.op.reshape(inside, relax.ShapeExpr(bcast))
            fill = _fill(value, str(x.ty.dtype))
            y = bb.normalize(relax.op.where(inside, y, fill))
    return y


def _pads_for_every_dim(bb, pads, axes, rank: int):
    """Pads of run-time `axes` spread to a (begins, ends) pair for every dim."""
    count = static_shape(axes)[0]
    named = relax.op.reshape(normalized_axes(bb, axes, rank), [count, 1])
    hits = relax.op.astype(relax.op.equal(named, i64(np.arange(rank)[None, :])), "int64")
    halves = []
    for half in range(2):
        part = relax.op.strided_slice(pads, [0], [half * count], [(half + 1) * count])
        halves.append(
            relax.op.sum(relax.op.multiply(hits, relax.op.reshape(part, [count, 1])), [0])
        )
    return bb.normalize(relax.op.concat(halves, axis=0))


def _fill(value, dtype: str):
    if value is None:
        return relax.const(np.zeros((), dtype), dtype)
    return relax.op.reshape(relax.op.astype(value, dtype), [])
