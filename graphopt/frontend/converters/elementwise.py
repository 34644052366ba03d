"""Element-wise and normalizing operators TVM lacks or gets wrong in some attribute forms."""

from __future__ import annotations

import numpy as np
from tvm import relax

from . import converter
from ._util import const_value, i64, is_const, select_by_axis, static_shape

OP = relax.op


@converter("Pow")
def pow_mixed_types(bb, op, inputs, attrs, opset):
    """The result has the base's type; TVM's power wants one float type for both operands."""
    x, y = inputs
    xt, yt = str(x.ty.dtype), str(y.ty.dtype)
    if xt == yt and xt.startswith(("float", "bfloat")):
        return None
    if xt.startswith(("float", "bfloat")):
        return OP.power(x, OP.astype(y, xt))
    # Integer base: float64 is exact for the integers a power can hold without overflow.
    z = OP.power(OP.astype(x, "float64"), OP.astype(y, "float64"))
    return OP.astype(OP.round(z), xt)


@converter("IsInf")
def isinf_one_sign(bb, op, inputs, attrs, opset):
    """detect_positive / detect_negative (TVM's converter ignores them)."""
    pos, neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    if pos and neg:
        return None
    x = inputs[0]
    zero = relax.const(0, str(x.ty.dtype))
    side = OP.greater(x, zero) if pos else OP.less(x, zero)
    if not pos and not neg:
        return OP.astype(OP.zeros_like(x), "bool")
    return OP.logical_and(OP.isinf(x), side)


@converter("LpNormalization")
def lp_normalization(bb, op, inputs, attrs, opset):
    """x / ||x||_p along one axis (p = 1 or 2); 0 where the norm is 0 (not 0/0)."""
    x, axis, p = inputs[0], attrs.get("axis", -1), attrs.get("p", 2)
    if p == 1:
        norm = OP.sum(OP.abs(x), [axis], keepdims=True)
    else:
        norm = OP.sqrt(OP.sum(OP.multiply(x, x), [axis], keepdims=True))
    norm = bb.normalize(norm)
    zero = relax.const(0, str(x.ty.dtype))
    return OP.where(OP.equal(norm, zero), zero, OP.divide(x, norm))


@converter("CumProd")
def cumprod(bb, op, inputs, attrs, opset):
    """Running product along an axis (constant or run-time), exclusive and reverse forms."""
    x, axis = inputs
    shape = static_shape(x)
    if shape is None or not shape:
        return None
    exclusive, reverse = bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0))

    def along(d: int):
        data = bb.normalize(OP.flip(x, d)) if reverse else x
        out = bb.normalize(OP.cumprod(data, d, exclusive=exclusive))
        return bb.normalize(OP.flip(out, d)) if reverse else out

    if is_const(axis):
        return along(int(const_value(axis).reshape(-1)[0]) % len(shape))
    return select_by_axis(bb, axis, len(shape), along)


@converter("BitCast")
def bitcast(bb, op, inputs, attrs, opset):
    """Reinterpret the bits as another type of the same width (TIR's reinterpret)."""
    import onnx
    from tvm import te, tirx

    x = inputs[0]
    to = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]).name
    if str(x.ty.dtype) == "bool" or to == "bool":  # one byte holding 0 or 1 either way
        return OP.astype(x, to)

    def compute(t):
        return te.compute(t.shape, lambda *i: tirx.reinterpret(to, t(*i)), name="bitcast")

    return bb.emit_te(compute, x)


@converter("ReverseSequence")
def reverse_sequence(bb, op, inputs, attrs, opset):
    """Each batch entry's first seq_len steps reversed: a gather with a per-entry index map."""
    x, lens = inputs
    shape = static_shape(x)
    if shape is None:
        return None
    t_axis, b_axis = attrs.get("time_axis", 0), attrs.get("batch_axis", 1)
    steps, batch = shape[t_axis], shape[b_axis]
    t = i64(np.arange(steps).reshape((steps, 1) if t_axis == 0 else (1, steps)))
    n = OP.reshape(OP.astype(lens, "int64"), (1, batch) if t_axis == 0 else (batch, 1))
    src = OP.where(OP.less(t, n), OP.subtract(OP.subtract(n, i64(1)), t), t)  # [T,B] or [B,T]
    index = OP.reshape(src, _index_shape(shape, t_axis, b_axis))
    index = bb.normalize(OP.broadcast_to(index, shape))
    return OP.gather_elements(x, index, axis=t_axis)


def _index_shape(shape, t_axis, b_axis):
    """The [T, B] index map's shape inside x's rank (other dims broadcast)."""
    return [shape[d] if d in (t_axis, b_axis) else 1 for d in range(len(shape))]


@converter("Elu")
def elu_any_float(bb, op, inputs, attrs, opset):
    """TVM's converter builds float32 constants, which fail on float16/bfloat16 inputs."""
    x = inputs[0]
    dtype = str(x.ty.dtype)
    if dtype == "float32":
        return None
    alpha = relax.const(float(attrs.get("alpha", 1.0)), dtype)
    one = relax.const(1.0, dtype)
    neg = OP.multiply(alpha, OP.subtract(OP.exp(x), one))
    return OP.where(OP.greater(x, relax.const(0.0, dtype)), x, neg)


@converter("EyeLike")
def eye_like_dtype(bb, op, inputs, attrs, opset):
    """The `dtype` attribute may differ from the input's (TVM's converter rejects that)."""
    import onnx

    if "dtype" not in attrs:
        return None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["dtype"]).name
    eye = bb.normalize(OP.eye_like(inputs[0], attrs.get("k", 0)))
    return OP.astype(eye, dtype)
