"""The int8 kernels that are not GEMMs, as unscheduled blocks for the CUDA rules: depthwise
convs (a few taps per output: the `window` rule, int32 accumulation), the row scales of
dynamically quantized matmuls (a row reduction) and residual adds (elementwise)."""

from __future__ import annotations

from tvm import te, tirx

from graphopt.int8_ops import AddSpec, ConvSpec, Epilogue, MatmulSpec, add_value
from graphopt.targets.cuda.int8.gemm import Divide, ieee_divide


def depthwise(spec: ConvSpec, ep: Epilogue, zp: int):
    """PrimFunc(x NCHW, w [C, 1, KH, KW] int8, corr, scale, fbias [C], out NCHW): the window sum
    of raw values (the zero point outside the input) times the weights, in int32."""
    n, c, h, w = spec.batch, spec.cin, spec.height, spec.width
    oh, ow = spec.out_hw
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pt, pl, pb, pr = spec.padding
    x = te.placeholder((n, c, h, w), spec.act_dtype, name="x")
    wt = te.placeholder((c, 1, spec.kh, spec.kw), "int8", name="w")
    corr = te.placeholder((c,), "int32", name="corr")
    scale = te.placeholder((c,), "float32", name="scale")
    fbias = te.placeholder((c,), "float32", name="fbias")

    def pad(b, ch, y, xx):
        inside = tirx.all(pt <= y, y < h + pt, pl <= xx, xx < w + pl)
        yc = tirx.max(tirx.min(y - pt, h - 1), 0)
        xc = tirx.max(tirx.min(xx - pl, w - 1), 0)
        value = tirx.Cast("int32", x[b, ch, yc, xc])
        return tirx.if_then_else(inside, value, tirx.const(zp, "int32"))

    xpad = te.compute((n, c, h + pt + pb, w + pl + pr), pad, name="xpad")
    ry = te.reduce_axis((0, spec.kh), name="ry")
    rx = te.reduce_axis((0, spec.kw), name="rx")
    acc = te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, xx: te.sum(
            xpad[b, ch, y * sh + ry * dh, xx * sw + rx * dw]
            * tirx.Cast("int32", wt[ch, 0, ry, rx]),
            axis=[ry, rx],
        ),
        name="acc",
    )
    out = te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, xx: ep.tir(acc[b, ch, y, xx], corr[ch], scale[ch], fbias[ch], None, 1),
        name="out",
    )
    return te.create_prim_func([x, wt, corr, scale, fbias, out])


def row_scale(spec: MatmulSpec, divide: Divide = ieee_divide):
    """PrimFunc(x fp32 [rows, K], rs [rows]): rs = max(max_k |x|, eps) / qmax, the scale with
    which the matmul kernel quantizes each row (the CPU kernel's own row scale)."""
    x = te.placeholder((spec.rows, spec.k), "float32", name="x")
    k = te.reduce_axis((0, spec.k), name="k")
    amax = te.compute((spec.rows,), lambda m: te.max(tirx.abs(x[m, k]), axis=k), name="amax")
    rs = te.compute(
        (spec.rows,),
        lambda m: divide(
            tirx.max(amax[m], tirx.const(spec.eps, "float32")),
            tirx.const(spec.qmax, "float32"),
        ),
        name="rs",
    )
    return te.create_prim_func([x, rs])


def add(spec: AddSpec):
    """PrimFunc(a, b, out): the int8 residual add (`graphopt.int8_ops.add_value`)."""
    a = te.placeholder(spec.shape, spec.a_dtype, name="a")
    b = te.placeholder(spec.shape, spec.b_dtype, name="b")
    out = te.compute(spec.shape, lambda *i: add_value(spec, a[i], b[i], 1), name="out")
    return te.create_prim_func([a, b, out])
