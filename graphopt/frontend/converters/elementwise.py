"""Element-wise and normalizing operators TVM lacks or gets wrong in some attribute forms."""

from __future__ import annotations

from tvm import relax

from . import converter
from ._util import const_value, is_const, select_by_axis, static_shape

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
