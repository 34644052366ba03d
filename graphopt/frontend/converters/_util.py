"""Helpers shared by the converter families: constants, shapes, small int64 tensors."""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx

from ... import _tvm


def const_value(expr) -> np.ndarray | None:
    """The value of a constant input (initializer or folded Constant), else None."""
    return _tvm.constant_value(expr) if _tvm.is_constant(expr) else None


def static_shape(expr) -> list[int] | None:
    """The input's shape when every dim is a known integer."""
    return _tvm.static_shape(expr.ty)


def i64(value) -> relax.Expr:
    return relax.const(np.asarray(value, dtype=np.int64), "int64")


def to_shape(bb: relax.BlockBuilder, tensor, rank: int, prefix: str) -> relax.ShapeExpr:
    """A 1-D int64 tensor of `rank` elements as a ShapeExpr of fresh symbolic dims."""
    tensor = bb.match_cast(tensor, relax.TensorType([rank], "int64"))
    shape = bb.emit(relax.op.tensor_to_shape(tensor))
    dims = [tirx.Var(f"{prefix}_{i}", "int64") for i in range(rank)]
    bb.match_cast(shape, relax.ShapeType(dims))
    return relax.ShapeExpr(dims)


def normalized_axes(bb: relax.BlockBuilder, axes, rank: int) -> relax.Expr:
    """Run-time axes with negative entries wrapped to [0, rank)."""
    axes = bb.normalize(relax.op.astype(axes, "int64"))
    wrapped = relax.op.add(axes, i64(rank))
    return bb.normalize(relax.op.where(relax.op.less(axes, i64(0)), wrapped, axes))


def axis_flags(bb: relax.BlockBuilder, axes, rank: int) -> relax.Expr:
    """A bool tensor of `rank` elements: is dim d named in the run-time `axes`?"""
    axes = normalized_axes(bb, axes, rank)
    dims = i64(np.arange(rank).reshape(rank, 1))
    hits = relax.op.equal(relax.op.reshape(axes, [1, -1]), dims)
    return bb.normalize(relax.op.greater(relax.op.sum(relax.op.astype(hits, "int64"), [1]), i64(0)))


def is_const(expr) -> bool:
    return _tvm.is_constant(expr)


def tvm_convert(bb: relax.BlockBuilder, op: str, inputs: list, attrs: dict, opset: int):
    """TVM's own converter for `op`, called on inputs made constant by the caller."""
    return _tvm.onnx_convert_map()[op].get_converter(opset)(bb, inputs, attrs, [{}, {}])


def scalar_axis(bb: relax.BlockBuilder, axis, rank: int) -> relax.Expr:
    """A run-time axis (0-d or one element) as a wrapped 0-d int64 tensor."""
    axis = bb.normalize(relax.op.reshape(relax.op.astype(axis, "int64"), []))
    wrapped = relax.op.add(axis, i64(rank))
    return bb.normalize(relax.op.where(relax.op.less(axis, i64(0)), wrapped, axis))


def select_by_axis(bb: relax.BlockBuilder, axis, rank: int, build) -> relax.Expr:
    """build(d) for the run-time axis d: every candidate is built, one is kept per element."""
    axis = scalar_axis(bb, axis, rank)
    out = bb.normalize(build(rank - 1))
    for d in range(rank - 1):
        out = bb.normalize(relax.op.where(relax.op.equal(axis, i64(d)), build(d), out))
    return out
