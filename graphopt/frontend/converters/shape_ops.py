"""Operators whose shape operand (a shape, split sizes, an axis, k, depth) is a run-time input.

TVM's converters need these operands constant. Here the operand is read at run time: the
output shape becomes symbolic (tensor_to_shape) where it depends on the value, and an axis
chooses among the candidates computed for every axis. Constant operands stay on TVM's path.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx

from . import converter
from ._util import i64, is_const, select_by_axis, static_shape, to_shape, tvm_convert


@converter("Reshape")
def reshape_runtime_shape(bb, op, inputs, attrs, opset):
    """0 copies the input dim (unless allowzero), -1 takes what is left."""
    x, target = inputs[0], inputs[1] if len(inputs) > 1 else None
    shape, target_shape = static_shape(x), static_shape(target) if target is not None else None
    if opset < 5 or target is None or is_const(target) or shape is None or target_shape is None:
        return None
    if not isinstance(target.ty, relax.TensorType):
        return None
    rank = target_shape[0]
    dims = bb.normalize(relax.op.astype(target, "int64"))
    if not attrs.get("allowzero", 0):
        copied = i64((shape + [0] * rank)[:rank])
        dims = bb.normalize(relax.op.where(relax.op.equal(dims, i64(0)), copied, dims))
    unknown = relax.op.equal(dims, i64(-1))
    known = relax.op.prod(relax.op.where(unknown, i64(np.ones(rank)), dims))
    rest = relax.op.floor_divide(i64(int(np.prod(shape))), known)
    dims = bb.normalize(relax.op.where(unknown, rest, dims))
    return relax.op.reshape(x, to_shape(bb, dims, rank, "reshaped"))


@converter("Split")
def split_runtime_sizes(bb, op, inputs, attrs, opset):
    """Each output is a slice between consecutive run-time split points."""
    x, split = inputs[0], inputs[1] if len(inputs) > 1 else None
    if opset < 13 or split is None or is_const(split):
        return None
    shape, parts = static_shape(x), static_shape(split)
    if shape is None or parts is None:
        return None
    rank, axis = len(shape), attrs.get("axis", 0) % len(shape)
    ends = bb.normalize(relax.op.cumsum(relax.op.astype(split, "int64"), axis=0))
    outputs = []
    for i in range(parts[0]):
        end = relax.op.take(ends, i64(i), axis=0)
        start = relax.op.take(ends, i64(i - 1), axis=0) if i else i64(0)
        onehot = i64(np.eye(rank, dtype=np.int64)[axis])
        begin = relax.op.multiply(onehot, start)
        stop = relax.op.add(
            i64(shape), relax.op.multiply(onehot, relax.op.subtract(end, i64(shape[axis])))
        )
        outputs.append(
            bb.normalize(relax.op.dynamic_strided_slice(x, begin, stop, i64(np.ones(rank))))
        )
    return relax.Tuple(outputs)


@converter("CumSum")
def cumsum_runtime_axis(bb, op, inputs, attrs, opset):
    x, axis = inputs[0], inputs[1]
    shape = static_shape(x)
    if is_const(axis) or shape is None or not shape:
        return None

    def along(d: int):
        return tvm_convert(bb, "CumSum", [x, i64(d)], attrs, opset)

    return select_by_axis(bb, axis, len(shape), along)


def _slice_axis(bb, x, shape, axis, stop):
    """x[..., :stop, ...] along `axis` with a run-time 0-d `stop`."""
    rank = len(shape)
    onehot = i64(np.eye(rank, dtype=np.int64)[axis])
    end = relax.op.add(
        i64(shape), relax.op.multiply(onehot, relax.op.subtract(stop, i64(shape[axis])))
    )
    return bb.normalize(
        relax.op.dynamic_strided_slice(x, i64(np.zeros(rank)), end, i64(np.ones(rank)))
    )


@converter("TopK")
def topk_runtime_k(bb, op, inputs, attrs, opset):
    """All elements sorted once (ties keep the lower index first), then the first k kept."""
    x, k = inputs[0], inputs[1] if len(inputs) > 1 else None
    shape = static_shape(x)
    if opset < 10 or k is None or is_const(k) or shape is None:
        return None
    axis = attrs.get("axis", -1) % len(shape)
    largest = bool(attrs.get("largest", 1))
    both = bb.normalize(
        relax.op.topk(x, k=shape[axis], axis=axis, ret_type="both", largest=largest, dtype="int64")
    )
    stop = bb.normalize(relax.op.reshape(relax.op.astype(k, "int64"), []))
    values = _slice_axis(bb, relax.TupleGetItem(both, 0), shape, axis, stop)
    indices = _slice_axis(bb, relax.TupleGetItem(both, 1), shape, axis, stop)
    return relax.Tuple([values, indices])


@converter("OneHot")
def one_hot_runtime_depth(bb, op, inputs, attrs, opset):
    """Compare each index with a run-time arange(depth) placed on the new axis."""
    indices, depth, values = inputs[:3]
    shape = static_shape(indices)
    if opset < 9 or is_const(depth) or shape is None:
        return None
    rank = len(shape) + 1
    axis = attrs.get("axis", -1) % rank
    count = bb.normalize(relax.op.reshape(relax.op.astype(depth, "int64"), [1]))
    (n,) = to_shape(bb, count, 1, "depth").values
    ones = bb.normalize(relax.op.ones(relax.ShapeExpr([n]), "int64"))
    arange = relax.op.subtract(relax.op.cumsum(ones, axis=0), i64(1))
    arange = relax.op.reshape(arange, relax.ShapeExpr([n if d == axis else 1 for d in range(rank)]))
    idx = bb.normalize(relax.op.astype(indices, "int64"))
    scalar = relax.op.reshape(count, [])
    idx = relax.op.where(relax.op.less(idx, i64(0)), relax.op.add(idx, scalar), idx)
    hot = relax.op.equal(relax.op.expand_dims(idx, axis), arange)
    off = relax.op.take(values, i64(0), axis=0)
    on = relax.op.take(values, i64(1), axis=0)
    return relax.op.where(hot, on, off)


@converter("Shape")
def shape_of_dynamic(bb, op, inputs, attrs, opset):
    """A shape known only at run time, as an int64 tensor.

    TVM's converter returns a ShapeExpr, which only a few of its converters accept; after a
    data-dependent operator (a Pad or Resize of run-time size) arithmetic on it fails.
    """
    x = inputs[0]
    if not isinstance(x.ty, relax.TensorType) or static_shape(x) is not None or x.ty.ndim < 0:
        return None
    if _input_symbolic(x.ty.shape):
        return None  # a shape in the model's input symbols: TVM's ShapeExpr keeps it symbolic
    rank = int(x.ty.ndim)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = max(min(start % rank if start < 0 else start, rank), 0), end
    end = max(min(end + rank if end < 0 else end, rank), 0)
    dims = bb.normalize(relax.op.shape_to_tensor(relax.op.shape_of(x)))
    return relax.op.strided_slice(dims, [0], [start], [max(end, start)])


def _input_symbolic(shape) -> bool:
    """Every dim an integer or an expression of the input symbols (--input-shape ranges):
    TVM's converters fold such ShapeExprs into symbolic shapes (Expand, Reshape, Slice)."""
    from ..symbolic import INPUT_SYMBOLS

    symbols = INPUT_SYMBOLS.get()
    if shape is None or not symbols or not isinstance(shape, relax.ShapeExpr):
        return False
    names = {v.name for d in shape.values for v in tirx.analysis.undefined_vars(d)}
    return bool(names) and names <= symbols
