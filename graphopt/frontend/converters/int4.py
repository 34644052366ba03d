"""com.microsoft MatMulNBits (4-bit, constant weights) as graphopt's int4-weight matmul op.

MatMulNBits(A [.., K], B uint8 [N, blocks, block_size / 2], scales [N * blocks],
zero_points uint8 [N, ceil(blocks / 2)] (optional; absent: 8), bias [N] (optional)) with
y = A @ W^T-ish, W[n, k] = (q - z) * s per block of `block_size` k: the same nibble order
(k = 2i low), groups and zero points as `graphopt.int4_ops`, so B's bytes, the scales and the
zero points become the op's constants as they are (weights recovered exactly) and the
target's int4 kernel runs them. Anything else (other bits, run-time weights, g_idx, float zero
points) is refused with the reason.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ...errors import UnsupportedOperatorError
from ...int4_ops import Int4MatmulSpec, portable_kernel
from . import converter
from ._util import const_value, static_shape


def _refuse(why: str):
    raise UnsupportedOperatorError(f"MatMulNBits: {why}")


def _zero_points(zp: np.ndarray | None, n: int, blocks: int) -> np.ndarray | None:
    """Packed uint8 zero points -> uint8 [N, blocks] (None: symmetric, zero point 8)."""
    if zp is None:
        return None
    if zp.dtype != np.uint8:
        _refuse("float zero points are not supported (uint8 packed ones are)")
    packed = zp.reshape(n, -1)
    out = np.empty((n, packed.shape[1] * 2), np.uint8)
    out[:, 0::2] = packed & 15
    out[:, 1::2] = packed >> 4
    return np.ascontiguousarray(out[:, :blocks])


@converter("MatMulNBits")
def matmul_nbits(bb, op, inputs, attrs, opset):
    k, n = int(attrs["K"]), int(attrs["N"])
    bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
    if bits != 4:
        _refuse(f"bits={bits} (only 4)")
    a, b, scales = inputs[0], inputs[1], inputs[2]
    rest = list(inputs[3:]) + [None] * 3
    zp_in, g_idx, bias = rest[0], rest[1], rest[2]
    if g_idx is not None:
        _refuse("g_idx (act-order indices) is not supported")
    weights = [const_value(v) if v is not None else None for v in (b, scales, zp_in)]
    if weights[0] is None or weights[1] is None or (zp_in is not None and weights[2] is None):
        _refuse("B, scales and zero_points must be constant")
    shape = static_shape(a)
    if shape is None or shape[-1] != k:
        _refuse(f"A must have a static shape ending in K={k}")
    blocks = -(-k // block)
    packed = np.ascontiguousarray(weights[0].reshape(n, -1)[:, : (k + 1) // 2]).astype(np.uint8)
    s = np.ascontiguousarray(weights[1].reshape(n, blocks))
    zeros = _zero_points(weights[2], n, blocks)
    spec = Int4MatmulSpec(tuple(shape), n, block, zeros is None, scale_dtype=str(s.dtype))
    kernel = bb.add_func(portable_kernel(spec), "int4_matmul")
    z = np.zeros(1, np.uint8) if zeros is None else zeros
    args = relax.Tuple([a, relax.const(packed), relax.const(s), relax.const(z)])
    out = relax.call_tir(kernel, args, relax.TensorType(spec.out_shape, "float32"))
    if bias is not None:
        out = relax.op.add(bb.emit(out), bias)
    return out
