"""Part of `lower-int8`: the portable kernels of the int8 ops (`graphopt.int8_ops`).

Plain scalar TIR over the natural-layout constants, with the int32 accumulation and the
epilogue of the op definitions, so a lowered graph builds and runs exactly on any target
before (or without) a target stage that replaces them by kernels for its instructions. Only
the outer loop is parallel; nothing here is meant to be fast.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.int8_ops import (
    WORD_CHANNELS,
    AddSpec,
    ConvSpec,
    Epilogue,
    MatmulSpec,
    add_value,
    row_count,
    tir_shape,
)

# op_pattern 8 (opaque): FuseOps never fuses an int8 kernel with its neighbours. A target
# stage finds each kernel by its recipe, and FuseTIR cannot merge one with a legalized op
# anyway (their buffers disagree on the shape's index type: a residual add fused with the
# transpose of its operand failed to build).
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}


def matmul_reference(spec: MatmulSpec, x_shape: tuple, ep: Epilogue) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w [K, N], corr, scale, fbias [N], xs, out [.., N])."""
    x_shape = tir_shape(x_shape)  # symbolic rows: size vars
    rows, k, n = row_count(x_shape), spec.k, spec.n
    fused = spec.fused_quant
    x_dtype = "float32" if fused else spec.act_dtype
    xs_shape = (rows,) if spec.per_row and not fused else ()
    out_shape = (*x_shape[:-1], n)

    def value(xf, rs, m, kk):
        if not fused:
            return T.Cast("int32", xf[m, kk])
        q = T.round(xf[m, kk] / rs[0])
        return T.Cast("int32", T.min(T.max(q, T.float32(-128.0)), T.float32(127.0)))

    def row_scale(xs, rs, m):
        if fused:
            return rs[0]
        return xs[m] if spec.per_row else xs[()]

    @T.prim_func
    def matmul(
        x: T.Buffer(x_shape, x_dtype),
        w: T.Buffer((k, n), "int8"),
        corr: T.Buffer((n,), "int32"),
        scale: T.Buffer((n,), "float32"),
        fbias: T.Buffer((n,), "float32"),
        xs: T.Buffer(xs_shape, "float32"),
        out: T.Buffer(out_shape, ep.out_dtype),
    ):
        T.func_attr(_ATTRS)
        xf = T.decl_buffer((rows, k), x_dtype, data=x.data)
        of = T.decl_buffer((rows, n), ep.out_dtype, data=out.data)
        for m in T.parallel(rows):
            rs = T.decl_buffer((1,), "float32", scope="local")
            acc = T.decl_buffer((1,), "int32", scope="local")
            if fused:
                rs[0] = T.float32(0)
                for kk in range(k):
                    rs[0] = T.max(rs[0], T.fabs(xf[m, kk]))
                rs[0] = T.max(rs[0], T.float32(spec.eps)) / T.float32(spec.qmax)
            for j in range(n):
                acc[0] = 0
                for kk in range(k):
                    acc[0] = acc[0] + value(xf, rs, m, kk) * T.Cast("int32", w[kk, j])
                of[m, j] = ep.tir(acc[0], corr[j], scale[j], fbias[j], row_scale(xs, rs, m), 1)

    return matmul


def conv2d_reference(spec: ConvSpec, layout: str, zp: int, ep: Epilogue) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w OIHW, corr, scale, fbias [Cout], out), x / out NCHW or NHWC."""
    n, h, w = tir_shape((spec.batch, spec.height, spec.width))  # any may be symbolic
    cin, cout = spec.cin, spec.cout
    cg, og, kh, kw = cin // spec.groups, cout // spec.groups, spec.kh, spec.kw
    oh, ow = spec.spatial(h, w)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pt, pl = spec.padding[0], spec.padding[1]
    nchw = layout == "NCHW"
    x_shape = (n, cin, h, w) if nchw else (n, h, w, cin)
    o_shape = (n, cout, oh, ow) if nchw else (n, oh, ow, cout)

    def tap(x, b, c, y, xx):
        """x[b, c, y, xx] as int32; the zero point outside the input (padding)."""
        inside = tvm.tirx.all(0 <= y, y < h, 0 <= xx, xx < w)
        yc, xc = T.max(T.min(y, h - 1), 0), T.max(T.min(xx, w - 1), 0)
        v = x[b, c, yc, xc] if nchw else x[b, yc, xc, c]
        return T.if_then_else(inside, T.Cast("int32", v), T.int32(zp))

    @T.prim_func
    def conv(
        x: T.Buffer(x_shape, spec.act_dtype),
        wt: T.Buffer((cout, cg, kh, kw), "int8"),
        corr: T.Buffer((cout,), "int32"),
        scale: T.Buffer((cout,), "float32"),
        fbias: T.Buffer((cout,), "float32"),
        out: T.Buffer(o_shape, ep.out_dtype),
    ):
        T.func_attr(_ATTRS)
        for task in T.parallel(n * cout):
            b = T.meta_var(task // cout)
            co = T.meta_var(task % cout)
            acc = T.decl_buffer((1,), "int32", scope="local")
            for oy, ox in T.grid(oh, ow):
                acc[0] = 0
                for ci, ry, rx in T.grid(cg, kh, kw):
                    y = T.meta_var(oy * sh + ry * dh - pt)
                    xx = T.meta_var(ox * sw + rx * dw - pl)
                    c = T.meta_var(co // og * cg + ci)
                    acc[0] = acc[0] + tap(x, b, c, y, xx) * T.Cast("int32", wt[co, ci, ry, rx])
                if nchw:
                    out[b, co, oy, ox] = ep.tir(acc[0], corr[co], scale[co], fbias[co], None, 1)
                else:
                    out[b, oy, ox, co] = ep.tir(acc[0], corr[co], scale[co], fbias[co], None, 1)

    return conv


def add_reference(spec: AddSpec) -> tvm.tirx.PrimFunc:
    """PrimFunc(a, b, out): the int8 residual add, element by element."""
    shape = tir_shape(spec.shape)  # a symbolic batch: a size var
    total = 1
    for d in shape:
        total = total * d

    @T.prim_func
    def add(
        a: T.Buffer(shape, spec.a_dtype),
        b: T.Buffer(shape, spec.b_dtype),
        out: T.Buffer(shape, spec.ep.out_dtype),
    ):
        T.func_attr(_ATTRS)
        af = T.decl_buffer((total,), spec.a_dtype, data=a.data)
        bf = T.decl_buffer((total,), spec.b_dtype, data=b.data)
        of = T.decl_buffer((total,), spec.ep.out_dtype, data=out.data)
        for i in range(total):
            of[i] = add_value(spec, af[i], bf[i], 1)

    return add


def quantize_nhwc_reference(shape: tuple, zp: int, out_dtype: str) -> tvm.tirx.PrimFunc:
    """PrimFunc(x fp32 NCHW [n, c <= 4, h, w], s fp32 [], out [n, h, w, 4]): quantize
    (round half to even, clamp) into NHWC; channels >= c hold zp."""
    n, c, h, w = tir_shape(shape)
    info = np.iinfo(out_dtype)

    def quant(x, s, b, ch, y, xx):
        v = T.round(x[b, T.min(ch, c - 1), y, xx] / s[()]) + T.float32(float(zp))
        v = T.min(T.max(v, T.float32(float(info.min))), T.float32(float(info.max)))
        return T.if_then_else(ch < c, T.Cast(out_dtype, T.Cast("int32", v)), T.Cast(out_dtype, zp))

    @T.prim_func
    def quantize(
        x: T.Buffer((n, c, h, w), "float32"),
        s: T.Buffer((), "float32"),
        out: T.Buffer((n, h, w, WORD_CHANNELS), out_dtype),
    ):
        T.func_attr(_ATTRS)
        for b, y, xx, ch in T.grid(n, h, w, WORD_CHANNELS):
            out[b, y, xx, ch] = quant(x, s, b, ch, y, xx)

    return quantize
