"""DFT as a matrix product: TVM's importer has no DFT.

For a static signal length the transform is linear in the real and imaginary parts of the
input, whatever `inverse`, `onesided` and `dft_length` say (zero padding, truncation, the
one-sided halves and irfft's Hermitian extension are all linear). The matrix is built by
applying onnx's reference DFT to each basis vector, so the semantics are onnx's own, and the
operator becomes transpose -> reshape -> matmul -> reshape -> transpose.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from . import converter
from ._util import const_value, i64, scalar_axis, static_shape


@converter("DFT")
def dft_as_matmul(bb, op, inputs, attrs, opset):
    x = inputs[0]
    shape = static_shape(x)
    length = inputs[1] if len(inputs) > 1 else None
    n = None if length is None else const_value(length)
    if shape is None or (length is not None and n is None):
        raise NotImplementedError("DFT needs a static input shape and a constant dft_length")
    flags = (bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0)))
    n = None if n is None else int(n.reshape(-1)[0])
    rank = len(shape)
    if opset < 20:
        return _dft_along(bb, x, shape, int(attrs.get("axis", 1)) % rank, n, flags)
    axis = inputs[2] if len(inputs) > 2 else None
    if axis is None or const_value(axis) is not None:
        d = -2 if axis is None else int(const_value(axis).reshape(-1)[0])
        return _dft_along(bb, x, shape, d % rank, n, flags)
    # a run-time axis (any signal axis, 0 .. rank - 2): every candidate computed, one kept
    shapes = {tuple(_out_shape(shape, d, n, flags)) for d in range(rank - 1)}
    if len(shapes) != 1:
        raise NotImplementedError("DFT with a run-time axis whose candidates differ in length")
    axis = scalar_axis(bb, axis, rank)
    out = _dft_along(bb, x, shape, rank - 2, n, flags)
    for d in range(rank - 2):
        chosen = relax.op.equal(axis, i64(d))
        out = bb.normalize(relax.op.where(chosen, _dft_along(bb, x, shape, d, n, flags), out))
    return out


def _reference(signal: np.ndarray, axis: int, n: int | None, flags) -> np.ndarray:
    from onnx.reference.ops.op_dft import DFT_17

    inverse, onesided = flags
    # the reference's own arithmetic (its _run never reads self), without an onnx node
    return DFT_17._run(None, signal, n, axis=axis, inverse=inverse, onesided=onesided)[0]


def _out_shape(shape, axis: int, n: int | None, flags) -> list[int]:
    """The output shape: the reference run on a signal of ones elsewhere."""
    probe = [1] * len(shape)
    probe[axis], probe[-1] = shape[axis], shape[-1]
    try:
        out = _reference(np.zeros(probe), axis, n, flags).shape
    except ValueError as err:  # e.g. irfft of a length-1 axis: no points
        raise NotImplementedError(f"DFT along axis {axis}: {err}") from err
    return [*shape[:axis], out[axis], *shape[axis + 1 : -1], out[-1]]


def _matrix(length: int, channels: int, n: int | None, flags) -> np.ndarray:
    """[length * channels, m * c_out]: the transform of each basis signal, flattened."""
    basis = np.eye(length * channels).reshape(length * channels, length, channels)
    out = _reference(basis, 1, n, flags)
    return out.reshape(length * channels, -1)


def _dft_along(bb, x, shape, axis: int, n: int | None, flags) -> relax.Expr:
    """x [..., L at axis, ..., c] -> [..., m at axis, ..., c_out] by one matmul."""
    rank, length, channels = len(shape), shape[axis], shape[-1]
    matrix = _matrix(length, channels, n, flags)
    out_shape = _out_shape(shape, axis, n, flags)
    out_len, out_c = out_shape[axis], out_shape[-1]
    order = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    moved = bb.normalize(relax.op.permute_dims(x, order))
    lead = [shape[d] for d in order[:-2]]
    flat = bb.normalize(relax.op.reshape(moved, [*lead, length * channels]))
    # in float64, as the reference computes: an inverse transform's cancelling terms in
    # float32 leave 2e-7 where the answer is 0
    wide = bb.normalize(relax.op.astype(flat, "float64"))
    y = bb.normalize(relax.op.matmul(wide, relax.const(matrix, "float64")))
    y = bb.normalize(relax.op.astype(y, str(x.ty.dtype)))
    y = bb.normalize(relax.op.reshape(y, [*lead, out_len, out_c]))
    back = [order.index(d) for d in range(rank)]
    return bb.normalize(relax.op.permute_dims(y, back))
