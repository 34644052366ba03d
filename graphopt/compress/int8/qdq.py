"""The QDQ form's building blocks: quantization parameters, numpy references, Relax emitters,
and small QDQ test graphs (`conv2d_qdq_module`, `matmul_qdq_module`) for pass and kernel tests.

The exact form is documented in `passes/quantize.py` (section "QDQ form"); everything that emits
it goes through `emit_act_qdq`, `emit_dynamic_qdq` and `weight_dequantize` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R_op

from ..common.errors import CalibrationError

QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
WEIGHT_QMAX = 127  # symmetric weights use [-127, 127]: negation stays representable
DYNAMIC_EPS = 1e-8  # floor of a run-time scale (an all-zero tensor must not divide by zero)


@dataclass(frozen=True)
class ActQuant:
    """Static quantization of one activation: x ~ (q - zero_point) * scale."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def to_json(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}


def act_qparams(lo: float, hi: float, dtype: str = "int8") -> ActQuant:
    """Affine parameters covering [lo, hi] (extended to contain 0, so 0 is exact)."""
    if dtype not in QRANGE:
        raise CalibrationError(f"activation dtype must be int8 or uint8, not '{dtype}'")
    qmin, qmax = QRANGE[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    if scale <= 0 or not np.isfinite(scale):
        scale = 1e-8
    scale = float(np.float32(scale))
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return ActQuant(scale, zp, dtype)


def weight_qparams(w: np.ndarray, axis: int, per_channel: bool = True):
    """Symmetric int8 weights: (wq int8, scale fp32 of w.shape[axis] or a scalar)."""
    w = np.asarray(w, np.float32)
    if per_channel:
        axis = axis % w.ndim
        other = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=other) if other else np.abs(w)
    else:
        amax = np.array(np.abs(w).max())
    scale = np.where(amax > 0, amax / WEIGHT_QMAX, 1.0).astype(np.float32)
    bshape = [1] * w.ndim
    if per_channel:
        bshape[axis] = -1
    wq = np.clip(np.round(w / scale.reshape(bshape)), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return wq, scale


def recover_int8_weight(w: np.ndarray, axis: int, tol: float = 1e-3):
    """(wq int8, per-channel scale) with w == wq * scale, or None when w is not such a product.

    For imported QDQ models, whose DequantizeLinear(int8 weight) the graph passes fold into an
    fp32 constant: each channel's scale is max|w| / k with k its largest |int| (127 or 128 for
    symmetric per-channel quantizers; any k in 1..128 for a per-tensor scale).
    """
    w = np.asarray(w, np.float32)
    axis = axis % w.ndim
    wm = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).astype(np.float64)
    scales = np.ones(wm.shape[0], np.float32)
    q = np.zeros(wm.shape, np.int8)
    for c, row in enumerate(wm):
        amax = np.abs(row).max()
        if amax == 0:
            continue
        for k in (127, 128, *range(126, 0, -1)):
            s = np.float32(amax / k)
            r = row / s
            if np.abs(r - np.round(r)).max() <= tol and np.abs(np.round(r)).max() <= 128:
                if np.round(r).max() > 127:
                    continue
                scales[c], q[c] = s, np.round(r).astype(np.int8)
                break
        else:
            return None
    wq = np.moveaxis(q.reshape(np.moveaxis(w, axis, 0).shape), 0, axis)
    return wq, scales


def fake_quant_np(x: np.ndarray, q: ActQuant) -> np.ndarray:
    """numpy reference of quantize -> dequantize (round half to even, like TVM's legalization)."""
    qmin, qmax = QRANGE[q.dtype]
    t = np.array(x, np.float32)  # a copy, then in place (0-d arrays too)
    t /= np.float32(q.scale)
    np.round(t, out=t)
    t += np.float32(q.zero_point)
    np.clip(t, qmin, qmax, out=t)
    t -= np.float32(q.zero_point)
    t *= np.float32(q.scale)
    return t


def dequant_weight_np(wq: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    bshape = [1] * wq.ndim
    if np.ndim(scale):
        bshape[axis % wq.ndim] = -1
    return (wq.astype(np.float32) * np.asarray(scale, np.float32).reshape(bshape)).astype(
        np.float32
    )


def emit_act_qdq(bb: relax.BlockBuilder, x: relax.Expr, q: ActQuant) -> relax.Var:
    """q = quantize(x, s, zp); return dequantize(q, s, zp): static activation quantization."""
    s = relax.const(q.scale, "float32")
    zp = relax.const(q.zero_point, q.dtype)
    xq = bb.emit(R_op.quantize(x, s, zp, axis=-1, out_dtype=q.dtype))
    return bb.emit(R_op.dequantize(xq, s, zp, axis=-1, out_dtype="float32"))


def row_axis(x: relax.Expr) -> int | None:
    """The axis of rows for per-row scales: ndim-2 when every other leading dim is 1 (the
    row count itself may be symbolic)."""
    shape = list(x.ty.shape.values)
    if len(shape) < 2 or any(not _is_one(d) for d in shape[:-2]):
        return None
    return len(shape) - 2


def _is_one(dim) -> bool:
    return isinstance(dim, tvm.tirx.IntImm) and int(dim) == 1


def emit_dynamic_qdq(bb: relax.BlockBuilder, x: relax.Expr, per_row: bool = False) -> relax.Var:
    """Run-time symmetric int8: s = max(max|x|, eps) / 127, zp = 0.

    per_row: one scale per row (token) of x [.., rows, K] (a 1-D s along axis ndim-2, when the
    other leading dims are 1): an outlier token no longer coarsens every other token's steps.
    """
    axis = row_axis(x) if per_row else None
    if axis is None:
        amax = bb.emit(R_op.max(R_op.abs(x)))
        zp = relax.const(0, "int8")
        axis = -1
    else:
        rows = x.ty.shape.values[axis]
        amax = bb.emit(R_op.reshape(R_op.max(R_op.abs(x), axis=-1), (rows,)))
        zp = _row_zeros(rows)
    amax = bb.emit(R_op.maximum(amax, relax.const(DYNAMIC_EPS, "float32")))
    s = bb.emit(R_op.divide(amax, relax.const(float(WEIGHT_QMAX), "float32")))
    xq = bb.emit(R_op.quantize(x, s, zp, axis=axis, out_dtype="int8"))
    return bb.emit(R_op.dequantize(xq, s, zp, axis=axis, out_dtype="float32"))


def _row_zeros(rows) -> relax.Expr:
    """The zero points of per-row int8: one per row for a static row count, else the scalar
    0 (a constant either way, as `lower-int8` wants it)."""
    if isinstance(rows, tvm.tirx.IntImm):
        return relax.const(np.zeros(int(rows), np.int8))
    return relax.const(0, "int8")


def weight_dequantize(wq: np.ndarray, scale: np.ndarray, axis: int) -> relax.Call:
    """dequantize(int8 constant, per-channel (or scalar) scale, zero zp, axis) -> fp32."""
    if np.ndim(scale):
        zp = relax.const(np.zeros(np.shape(scale), np.int8))
        s = relax.const(np.asarray(scale, np.float32))
    else:
        zp = relax.const(0, "int8")
        s = relax.const(float(scale), "float32")
    return R_op.dequantize(relax.const(wq), s, zp, axis=axis, out_dtype="float32")


# ---- small QDQ test graphs (also imported by the integer-kernel tests) ----------------------


def conv2d_qdq_module(
    x_shape: Sequence[int],
    w: np.ndarray,
    act: ActQuant,
    *,
    bias: np.ndarray | None = None,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    groups: int = 1,
    activation: str | None = None,
    per_channel: bool = True,
) -> tvm.IRModule:
    """main(x) = [relu|relu6](conv2d(QDQ(x), DQ(wq)) [+ bias]) in the QDQ form (NCHW/OIHW)."""
    wq, s_w = weight_qparams(w, 0, per_channel)
    return _qdq_module(
        x_shape,
        act,
        lambda xf: R_op.nn.conv2d(
            xf, weight_dequantize(wq, s_w, 0), strides=strides, padding=padding, groups=groups
        ),
        bias.reshape(1, -1, 1, 1) if bias is not None else None,
        activation,
    )


def matmul_qdq_module(
    x_shape: Sequence[int],
    w: np.ndarray,
    act: ActQuant | None,
    *,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    per_channel: bool = True,
) -> tvm.IRModule:
    """main(x) = matmul(QDQ(x), DQ(wq)) [+ bias] with W [K, N]; act=None: dynamic int8."""
    wq, s_w = weight_qparams(w, 1, per_channel)
    return _qdq_module(
        x_shape,
        act,
        lambda xf: R_op.matmul(xf, weight_dequantize(wq, s_w, 1)),
        bias,
        activation,
    )


def _qdq_module(x_shape, act, make_op, bias, activation) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(tuple(x_shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = emit_act_qdq(bb, x, act) if act is not None else emit_dynamic_qdq(bb, x)
            y = bb.emit(make_op(xf))
            if bias is not None:
                y = bb.emit(R_op.add(y, relax.const(np.asarray(bias, np.float32))))
            if activation == "relu":
                y = bb.emit(R_op.nn.relu(y))
            elif activation == "relu6":
                y = bb.emit(R_op.clip(y, 0.0, 6.0))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()
