"""The int8-weight convolution `lower-int4` emits for the convs int4 does not take (depthwise,
stem and other window convs): weights stored int8 with one fp32 scale per output channel,
activations fp32.

    w[o, i, kh, kw] = f32(wq[o, i, kh, kw]) * s[o]      (one rounding: wq is an exact integer)
    y = conv2d(x, w)                                    fp32, NCHW / OIHW, any groups

wq and s are the int8 flow's symmetric per-channel weight quantization (`weight_qparams`:
round half to even of w / (max|w| / 127)), so the values are those `--quantize int8` would
give the weight. The kernel takes x at run time, so constant folding cannot turn the int8
weight back into an fp32 constant: the library stores 1 byte a weight (a 1x1 conv's int4
takes 0.5). The dequantization is the kernel's first block, inlined by the schedule rules
that inline elementwise producers, or computed once per call otherwise.
"""

from __future__ import annotations

import numpy as np
import tvm

from graphopt.compress.int8.qdq import dequant_weight_np, weight_qparams


def _int64(d):
    """A static dim as an int64 immediate; an expression cast to int64 where it is not."""
    d = d if isinstance(d, int) else tvm.sym.Analyzer().simplify(d)
    if isinstance(d, (int, tvm.tirx.IntImm)):
        return tvm.tirx.IntImm("int64", int(d))
    return d if str(d.ty) == "int64" else tvm.tirx.Cast("int64", d)


def quantize_conv_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 OIHW weight, fp32 [O] scale) of an fp32 OIHW conv weight."""
    wq, scale = weight_qparams(np.asarray(w, np.float32), 0)
    return np.asarray(wq, np.int8), np.asarray(scale, np.float32).reshape(-1)


def dequantize_conv_weight(wq: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The fp32 weight the kernel computes with."""
    return np.asarray(dequant_weight_np(wq, scale, 0), np.float32)


def w8_conv_kernel(
    x_shape: tuple,  # ints, or the graph's dims (size vars and expressions of them)
    w_shape: tuple[int, ...],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, wq, s, y): y = conv2d(x, f32(wq) * s[o]) as TVM's own conv compute (the one
    LegalizeOps gives a conv2d), padding [top, left, bottom, right]."""
    from tvm import te, topi

    def dims(shape):  # int64 as Relax's shapes (FuseTIR); a symbolic dim as the graph has it
        return [d if isinstance(d, tvm.tirx.Var) else _int64(d) for d in shape]

    x = te.placeholder(dims(x_shape), "float32", name="x")
    wq = te.placeholder(dims(w_shape), "int8", name="wq")
    s = te.placeholder(dims(w_shape[:1]), "float32", name="ws")
    w = te.compute(
        dims(w_shape), lambda o, i, h, v: wq[o, i, h, v].astype("float32") * s[o], name="w8"
    )
    if groups == 1:
        y = topi.nn.conv2d_nchw(x, w, strides, padding, dilation, out_dtype="float32")
    else:
        y = topi.nn.group_conv2d_nchw(x, w, strides, padding, dilation, groups, "float32")
    # topi's output shape has int32 dims where Relax's are int64 (FuseTIR needs them equal)
    out = te.compute(dims(y.shape), lambda *i: y(*i), name="w8_conv2d")
    return te.create_prim_func([x, wq, s, out]).without_attr("global_symbol")
