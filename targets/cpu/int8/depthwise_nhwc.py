"""Channel-last (NHWC) int8 depthwise conv: the CPU kernel of depthwise NHWC conv2d ops.

Channels sit in SIMD lanes, so every tap is one vector multiply-add at any stride or width
(the NCHW kernel puts the output width in lanes: a 7-wide row fills 7 of 16). The math is the
NCHW depthwise kernel's: fp32 FMAs on integer values (exact while |sum| < 2^24: lower-int8
keeps depthwise convs in NHWC only when `ConvSpec.fp32_exact`), converted to int32 for the
shared requantize epilogue.

One task computes `rows` output rows of one channel block. It first copies the input rows it
reads, minus the zero point and as fp32, into its own padded buffer (padding reads 0, i.e. the
zero point: exact, as in fake quantization); the window then reads only that buffer. A buffer
per task keeps it in L1 (one channel block: 6 rows x 114 x 16 lanes x 4 bytes = 44 KB for the
112x112 layers), where a padded copy of the whole input would not fit.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.int8_ops import tir_shape
from graphopt.targets.cpu.int8.kernels import ConvSpec, Epilogue, Isa, _loop

# Output rows per task (stride 1; strided convs take half: their input rows are 2x taller).
ROWS = 4
# Output columns computed together (independent FMA chains in flight).
COLS = 4


def channel_pad(channels: int, isa: Isa) -> int:
    """Per-channel constants are padded to whole vectors (the kernel reads them as vectors)."""
    return -(-channels // isa.lanes) * isa.lanes


def _load_rows(spec: ConvSpec, zp: int, lanes: int, rows_in: int, cols_in, hw: tuple):
    """TIR macro: the input rows and columns a task reads (one channel block), minus the zero
    point, as fp32, into its buffer; 0 outside the input (padding). `hw`: the input's height
    and width (ints, or size vars)."""
    (h, w), ch, sh = hw, spec.cin, spec.stride[0]
    pt, pl = spec.padding[0], spec.padding[1]
    f32 = f"float32x{lanes}"

    @T.macro
    def load(x, buf, b, oy0, c0):
        for iy, ix in T.grid(rows_in, cols_in):
            y = T.meta_var(oy0 * sh + iy - pt)
            xx = T.meta_var(ix - pl)
            if 0 <= y and y < h and 0 <= xx and xx < w:
                if c0 + lanes <= ch:
                    buf[iy, ix, T.ramp(0, 1, lanes)] = T.Cast(
                        f32,
                        T.Cast(f"int32x{lanes}", x[b, y, xx, T.ramp(c0, 1, lanes)])
                        - T.broadcast(T.int32(zp), lanes),
                    )
                else:
                    for j in range(lanes):
                        buf[iy, ix, j] = T.Cast(
                            "float32", T.Cast("int32", x[b, y, xx, T.min(c0 + j, ch - 1)]) - zp
                        )
            else:
                buf[iy, ix, T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)

    return load


def _output_rows(spec: ConvSpec, ep: Epilogue, lanes: int, rows: int, out_hw: tuple):
    """TIR macro: a task's output rows: window sums of COLS columns at a time (independent FMA
    chains), then the rest one by one; the channel block's tail stores its valid lanes only.
    `out_hw`: the output's height and width (ints, or expressions of the input's size vars)."""
    ch, kh, kw = spec.cin, spec.kh, spec.kw
    oh, ow = out_hw
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    col_blocks = ow // COLS

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
        vec = T.ramp(c0, 1, lanes)
        return ep.tir(acc, corr[vec], scale[vec], fbias[vec], None, lanes)

    @T.macro
    def store(out, tail, b, oy0, ox, c0, value):
        if c0 + lanes <= ch:
            out[b, oy0, ox, T.ramp(c0, 1, lanes)] = value
        else:
            tail[T.ramp(0, 1, lanes)] = value
            for j in range(ch - c0):
                out[b, oy0, ox, c0 + j] = tail[j]

    @T.macro
    def compute(buf, wv, acc, tail, out, corr, scale, fbias, b, oy0, c0):
        for r in range(T.min(rows, oh - oy0)):
            for xb in range(col_blocks):
                for u in T.unroll(COLS):
                    acc[u] = window(buf, wv, r, xb * COLS + u)
                for u in T.unroll(COLS):
                    store(out, tail, b, oy0 + r, xb * COLS + u, c0,
                          requant(acc[u], corr, scale, fbias, c0))  # fmt: skip
            for ox in range(col_blocks * COLS, ow):
                store(out, tail, b, oy0 + r, ox, c0,
                      requant(window(buf, wv, r, ox), corr, scale, fbias, c0))  # fmt: skip

    return compute


def depthwise_nhwc_kernel(spec: ConvSpec, isa: Isa, zp: int, ep: Epilogue) -> tvm.tirx.PrimFunc:
    """PrimFunc(x NHWC, w int8 [KH*KW, Cp], corr, scale, fbias [Cp], out NHWC).

    One task: `rows` output rows of one channel block; its input rows are loaded first
    (`_load_rows`), then the rows computed (`_output_rows`)."""
    lanes = isa.lanes
    n, h, w = tir_shape((spec.batch, spec.height, spec.width))  # any may be symbolic
    ch, kh, kw = spec.cin, spec.kh, spec.kw
    oh, ow = spec.spatial(h, w)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    cp = channel_pad(ch, isa)
    cblocks = cp // lanes
    rows = ROWS if (sh, sw) == (1, 1) else ROWS // 2
    row_blocks = (oh + rows - 1) // rows
    rows_in = (rows - 1) * sh + (kh - 1) * dh + 1
    # a symbolic width sizes the task's buffer at run time (heap scratch, not the stack)
    cols_in = (ow - 1) * sw + (kw - 1) * dw + 1
    f32 = f"float32x{lanes}"
    load = _load_rows(spec, zp, lanes, rows_in, cols_in, (h, w))
    compute = _output_rows(spec, ep, lanes, rows, (oh, ow))

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
                wv[t] = T.Cast(f32, wt[t, T.ramp(c0, 1, lanes)])
            load(x, buf, b, oy0, c0)
            compute(buf, wv, acc, tail, out, corr, scale, fbias, b, oy0, c0)

    return depthwise
