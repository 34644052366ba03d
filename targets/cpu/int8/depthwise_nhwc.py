"""Channel-last (NHWC) int8 depthwise conv: the kernel `lower-int8` uses when layout is NHWC.

Channels sit in SIMD lanes, so every tap is one vector multiply-add at any stride or width
(the NCHW kernel puts the output width in lanes: a 7-wide row fills 7 of 16). The math is the
NCHW depthwise kernel's: fp32 FMAs on integer values (exact while |sum| < 2^24, which the pass
checks), converted to int32 for the shared requantize epilogue.

One task computes `rows` output rows of one channel block. It first copies the input rows it
reads, minus the zero point and as fp32, into its own padded buffer (padding reads 0, i.e. the
zero point: exact, as in fake quantization); the window then reads only that buffer. A buffer
per task keeps it in L1 (one channel block: 6 rows x 114 x 16 lanes x 4 bytes = 44 KB for the
112x112 layers), where a padded copy of the whole input would not fit.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.targets.cpu.int8.kernels import ConvSpec, Epilogue, Isa, _loop

# Output rows per task (stride 1; strided convs take half: their input rows are 2x taller).
ROWS = 4
# Output columns computed together (independent FMA chains in flight).
COLS = 4


def channel_pad(channels: int, isa: Isa) -> int:
    """Per-channel constants are padded to whole vectors (the kernel reads them as vectors)."""
    return -(-channels // isa.lanes) * isa.lanes


def depthwise_nhwc_kernel(spec: ConvSpec, isa: Isa, zp: int, ep: Epilogue) -> tvm.tirx.PrimFunc:
    """PrimFunc(x NHWC, w int8 [KH*KW, Cp], corr, scale, fbias [Cp], out NHWC)."""
    lanes = isa.lanes
    n, ch, h, w = spec.batch, spec.cin, spec.height, spec.width
    kh, kw = spec.kh, spec.kw
    oh, ow = spec.out_hw
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pt, pl = spec.padding[0], spec.padding[1]
    cp = channel_pad(ch, isa)
    cblocks = cp // lanes
    rows = ROWS if (sh, sw) == (1, 1) else ROWS // 2
    row_blocks = -(-oh // rows)
    rows_in = (rows - 1) * sh + (kh - 1) * dh + 1
    cols_in = (ow - 1) * sw + (kw - 1) * dw + 1
    col_blocks = ow // COLS
    f32 = f"float32x{lanes}"

    def channels(c0):
        return T.ramp(c0, 1, lanes)

    def window(buf, wv, r, ox):
        total = None
        for ry in range(kh):
            for rx in range(kw):
                term = (
                    buf[r * sh + ry * dh, ox * sw + rx * dw, T.ramp(0, 1, lanes)] * wv[ry * kw + rx]
                )
                total = term if total is None else total + term
        return T.Cast(f"int32x{lanes}", total)

    def requant(acc, corr, scale, fbias, c0):
        vec = channels(c0)
        return ep.tir(acc, corr[vec], scale[vec], fbias[vec], None, lanes)

    @T.prim_func
    def depthwise(
        x: T.Buffer((n, h, w, ch), spec.act_dtype),
        wt: T.Buffer((kh * kw, cp), "int8"),
        corr: T.Buffer((cp,), "int32"),
        scale: T.Buffer((cp,), "float32"),
        fbias: T.Buffer((cp,), "float32"),
        out: T.Buffer((n, oh, ow, ch), ep.out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for task in _loop(4 * n * ch * oh * ow * kh * kw)(n * row_blocks * cblocks):
            b = T.meta_var(task // (row_blocks * cblocks))
            oy0 = T.meta_var(task // cblocks % row_blocks * rows)
            c0 = T.meta_var(task % cblocks * lanes)
            buf = T.decl_buffer((rows_in, cols_in, lanes), "float32")
            wv = T.decl_buffer((kh * kw,), f32, scope="local")
            acc = T.decl_buffer((COLS,), f"int32x{lanes}", scope="local")
            tail = T.decl_buffer((lanes,), ep.out_dtype, scope="local")
            for t in T.unroll(kh * kw):
                wv[t] = T.Cast(f32, wt[t, channels(c0)])
            # The input rows and columns this task reads, minus the zero point, as fp32.
            for iy, ix in T.grid(rows_in, cols_in):
                y = T.meta_var(oy0 * sh + iy - pt)
                xx = T.meta_var(ix - pl)
                if 0 <= y and y < h and 0 <= xx and xx < w:
                    if c0 + lanes <= ch:
                        buf[iy, ix, T.ramp(0, 1, lanes)] = T.Cast(
                            f32,
                            T.Cast(f"int32x{lanes}", x[b, y, xx, channels(c0)])
                            - T.broadcast(T.int32(zp), lanes),
                        )
                    else:
                        for j in range(lanes):
                            buf[iy, ix, j] = T.Cast(
                                "float32", T.Cast("int32", x[b, y, xx, T.min(c0 + j, ch - 1)]) - zp
                            )
                else:
                    buf[iy, ix, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
            for r in range(T.min(rows, oh - oy0)):
                for xb in range(col_blocks):
                    for u in T.unroll(COLS):
                        acc[u] = window(buf, wv, r, xb * COLS + u)
                    for u in T.unroll(COLS):
                        if c0 + lanes <= ch:
                            out[b, oy0 + r, xb * COLS + u, channels(c0)] = requant(
                                acc[u], corr, scale, fbias, c0
                            )
                        else:
                            tail[T.ramp(0, 1, lanes)] = requant(acc[u], corr, scale, fbias, c0)
                            for j in range(ch - c0):
                                out[b, oy0 + r, xb * COLS + u, c0 + j] = tail[j]
                for ox in range(col_blocks * COLS, ow):
                    if c0 + lanes <= ch:
                        out[b, oy0 + r, ox, channels(c0)] = requant(
                            window(buf, wv, r, ox), corr, scale, fbias, c0
                        )
                    else:
                        tail[T.ramp(0, 1, lanes)] = requant(
                            window(buf, wv, r, ox), corr, scale, fbias, c0
                        )
                        for j in range(ch - c0):
                            out[b, oy0 + r, ox, c0 + j] = tail[j]

    return depthwise
