"""The CPU kernel of the `quantize_nhwc` op: an fp32 NCHW image into NHWC int8 words.

An RGB input of an NHWC int8 graph would otherwise take three passes over the image
(quantize, transpose, pad its 3 channels to a whole 4-byte word for the window conv); with
channels in separate planes, a generic transpose stores byte by byte. Here 16 pixels of each
channel are quantized as vectors and the 4 channels of a pixel are assembled into one 32-bit
word with shifts, so the output is written 64 bytes at a time. The math is TVM's quantize
legalization: clamp(round_half_even(x / s) + zp), cast.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.int8_ops import WORD_CHANNELS, tir_shape
from graphopt.targets.cpu.int8.kernels import _loop

LANES = 16
CHANNELS = WORD_CHANNELS  # output channels: one 32-bit word per pixel


def quantize_nhwc_kernel(
    shape: tuple[int, int, int, int], zp: int, out_dtype: str
) -> tvm.tirx.PrimFunc:
    """PrimFunc(x fp32 NCHW [n, c <= 4, h, w], scale fp32 [], out [n, h, w, 4]); channels
    >= c hold zp. (The scale is an operand: Relax's RewriteDataflowReshape inspects kernels
    with one input and fails on a body without blocks.)"""
    n, c, h, w = tir_shape(shape)  # n may be symbolic
    assert c <= CHANNELS
    info = np.iinfo(out_dtype)
    vec_w = w // LANES * LANES

    def word(x, s, b, y, xs, lanes: int):
        """The 4 quantized channels of `lanes` pixels, packed little-endian into int32s."""

        def const(v, dtype="int32"):
            value = T.int32(v) if dtype == "int32" else T.float32(v)
            return value if lanes == 1 else T.broadcast(value, lanes)

        i32 = "int32" if lanes == 1 else f"int32x{lanes}"
        packed = None
        for ch in range(CHANNELS):
            if ch < c:
                scale = s[()] if lanes == 1 else T.broadcast(s[()], lanes)
                v = T.round(x[b, ch, y, xs] / scale) + const(float(zp), "f")
                v = T.min(T.max(v, const(float(info.min), "f")), const(float(info.max), "f"))
                q = T.bitwise_and(T.Cast(i32, v), const(0xFF))
                field = q if ch == 0 else T.shift_left(q, const(8 * ch))
            else:  # padding: the zero point, shifted here (a top byte >= 128 wraps to < 0)
                bits = (zp & 0xFF) << (8 * ch)
                field = const(bits - (1 << 32) if bits >= 1 << 31 else bits)
            packed = field if packed is None else T.bitwise_or(packed, field)
        return packed

    @T.prim_func
    def quantize(
        x: T.Buffer((n, c, h, w), "float32"),
        s: T.Buffer((), "float32"),
        out: T.Buffer((n, h, w, CHANNELS), out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        words = T.decl_buffer((n, h, w), "int32", data=out.data)
        for by in _loop(16 * n * c * h * w)(n * h):
            b = T.meta_var(by // h)
            y = T.meta_var(by % h)
            for xb in range(vec_w // LANES):
                words[b, y, T.ramp(xb * LANES, 1, LANES)] = word(
                    x, s, b, y, T.ramp(xb * LANES, 1, LANES), LANES
                )
            for xx in range(vec_w, w):
                words[b, y, xx] = word(x, s, b, y, xx, 1)

    return quantize
