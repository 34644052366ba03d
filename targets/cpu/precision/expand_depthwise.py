"""One kernel for a 16-bit pointwise conv (a `vdpbf16ps` pair matmul over pixels) and the
depthwise conv that reads its output, run together over bands of output rows.

MobileNetV2's and EfficientNet-Lite0's first expansion writes a 112x112x96 map (2.4 MB in
bf16, 1.2 MB a thread: more than a core's 1 MB L2) that the stride-2 depthwise conv after it
reads back from memory. Here a parallel task is a band of the depthwise conv's output rows
(`band_rows`): it runs the pair matmul's register tiles over the input rows the band's
windows read (a band recomputes the rows it shares with the next) into a scratch of bf16 bit
patterns that stays in the core's cache, then the depthwise conv's rows over that scratch.
The arithmetic is the two kernels' own (`dpbf16.pair_kernel`, `depthwise.row_macro`): the
same bits as running them one after the other with the bit-pattern hand-off between them.
"""

from __future__ import annotations

import dataclasses
import math

import tvm
from tvm.script import tirx as T

from graphopt import precision_ops as P
from graphopt.precision_depthwise import RECIPE_ATTR as DW_RECIPE
from graphopt.precision_depthwise import DepthwiseSpec
from graphopt.precision_ops import PrecisionMatmulSpec
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision.cvt_bf16 import CVT_IR, bf16_bits
from graphopt.targets.cpu.precision.depthwise import row_macro
from graphopt.targets.cpu.precision.kernels import store_macro

_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


def fusable(mm: PrecisionMatmulSpec, dw: DepthwiseSpec) -> bool:
    """Whether `mm` (laid out for `vdpbf16ps`) feeds `dw` as one kernel can run them: static
    bf16 shapes of one image, bit patterns handed over, no residual or GELU, even K."""
    shape = tuple(mm.x_shape)
    return (
        mm.layout == D.LAYOUT
        and all(isinstance(d, int) for d in shape)
        and len(shape) == 4
        and shape[0] == 1
        and mm.precision == dw.precision == "bf16"
        and mm.x_bits
        and mm.out_bits
        and dw.x_bits
        and not (mm.residual or mm.gelu)
        and mm.k % 2 == 0
        and dw.x_shape == (*shape[:3], mm.n)
        and mm.n % D.PANEL == 0
    )


def band_rows(dw: DepthwiseSpec, threads: int, l2_bytes: int) -> int:
    """Output rows a band: of the bands whose scratch (the input rows they read, in bf16)
    takes at most 3/4 of a core's L2, the one whose busiest thread expands the fewest input
    rows (narrow bands recompute more of the rows they share with the next). MobileNetV2's
    112x112x96 pair (56 output rows, 2 threads) in bands of 2, 4, 7 and 14 rows took 0.98,
    0.92, 0.91 and 0.90 of the two kernels' time."""
    _, _, wd, c = dw.x_shape
    oh, (kh, _), (sh, _) = dw.out_shape[1], dw.kernel, dw.strides
    fits = [b for b in range(1, oh + 1) if ((b - 1) * sh + kh) * wd * c * 2 <= l2_bytes * 3 // 4]
    # the input rows the busiest thread expands: its bands x each band's rows
    work = {b: math.ceil(math.ceil(oh / b) / threads) * ((b - 1) * sh + kh) for b in fits or [1]}
    return max(b for b in work if work[b] == min(work.values()))


def expand_depthwise_kernel(
    mm: PrecisionMatmulSpec, dw: DepthwiseSpec, threads: int = 1, l2_bytes: int = 1 << 20
) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, wp, [bias], w, [dw bias], out): `mm`'s kernel, then `dw`'s, a band of
    output rows a parallel task (`band_rows`; module docstring)."""
    _, h, wd, k = mm.x_shape
    n, pairs = mm.n, mm.k_pairs
    _, oh, _, _ = dw.out_shape
    (kh, _), (sh, _), (top, _, _, _) = dw.kernel, dw.strides, dw.pads
    tile = D.tile_for(mm, D.DPBF16)
    mr, nr = tile.mr, tile.nr
    groups = D.padded_panels(mm, tile) // nr
    band = band_rows(dw, threads, l2_bytes)
    bands, band_in = -(-oh // band), (band - 1) * sh + kh  # input rows a band reads, at most
    one_row, vl, _ = row_macro(dw, D.PANEL, True)
    store = store_macro(mm, D.PANEL, bf16_bits)

    def step(acc, x, w):
        return T.call_pure_extern("float32x16", D.DPBF16.function, acc, x, w)

    @T.macro
    def expand(xw, wp, bias, scratch, first, count):
        """mm's register tiles over pixel rows first .. first + count - 1 into scratch."""
        acc = T.decl_buffer((mr * nr,), "float32x16", scope="local")
        tail = T.decl_buffer((D.PANEL,), "float32", scope="local")
        for t, g in T.grid((count + mr - 1) // mr, groups):
            for i in T.unroll(mr * nr):
                acc[i] = T.broadcast(T.float32(0), D.PANEL)
            for pr in range(pairs):
                for r in T.unroll(mr):
                    xv = T.meta_var(T.broadcast(xw[first + T.min(t * mr + r, count - 1), pr], 16))
                    for j in T.unroll(nr):
                        w = T.meta_var(wp[g * nr + j, pr, T.ramp(0, 1, D.PANEL)])
                        acc[r * nr + j] = step(acc[r * nr + j], xv, w)
            for r in T.unroll(mr):
                if t * mr + r < count:
                    for j in T.unroll(nr):
                        col = T.meta_var((g * nr + j) * D.PANEL)
                        store(scratch, tail, t * mr + r, col, acc[r * nr + j], bias, None)

    @T.macro
    def body(x, wp, b1, w, b2, out):
        xw = T.decl_buffer((h * wd, pairs), "int32", data=x.data)
        for b in T.parallel(bands):
            lo = T.meta_var(T.max(b * band * sh - top, 0))
            hi = T.meta_var(T.min((T.min(b * band + band, oh) - 1) * sh - top + kh, h))
            scratch = T.decl_buffer((band_in * wd, n), "uint16")
            expand(xw, wp, b1, scratch, lo * wd, (hi - lo) * wd)
            rows = T.decl_buffer((1, band_in, wd, n), "uint16", data=scratch.data)
            for row in range(b * band, T.min(b * band + band, oh)):
                one_row(rows, w, b2, out, 0, row, lo, 0, n // vl)

    @T.macro
    def with_instructions(x, wp, b1, w, b2, out):
        with T.attr(0, "pragma_import_llvm", D.DPBF16.ir + CVT_IR):
            body(x, wp, b1, w, b2, out)

    return _kernel_func(with_instructions, mm, dw, (groups * nr, pairs, D.PANEL))


def _kernel_func(body, mm: PrecisionMatmulSpec, dw: DepthwiseSpec, wp_shape) -> tvm.tirx.PrimFunc:
    """The PrimFunc (x, wp, b1, w, b2, out) around `body`; the biases only where the specs
    have them."""
    x_shape, w_shape, c = tuple(mm.x_shape), (*dw.kernel, mm.n), mm.n
    out_shape, out_dtype = dw.out_shape, "uint16" if dw.out_bits else "float32"

    @T.prim_func(private=True)
    def expand_depthwise(
        x: T.Buffer(x_shape, "uint16"),
        wp: T.Buffer(wp_shape, "int32"),
        b1: T.Buffer((c,), "float32"),
        w: T.Buffer(w_shape, "uint16"),
        b2: T.Buffer((c,), "float32"),
        out: T.Buffer(out_shape, out_dtype),
    ):
        T.func_attr(_ATTRS)
        body(x, wp, b1, w, b2, out)

    func = expand_depthwise.with_attr(P.RECIPE_ATTR, mm.text()).with_attr(
        DW_RECIPE, dataclasses.replace(dw, layout="cpu").text()
    )  # both recipes: the flops count and the passes that set generated kernels aside
    drop = {"b1"} if not mm.bias else set()
    drop |= {"b2"} if not dw.bias else set()
    if not drop:
        return func
    params = [p for p in func.params if p.name not in drop]
    return tvm.tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)
