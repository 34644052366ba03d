"""The CPU kernel of the 16-bit depthwise conv (`graphopt.precision_depthwise`): NHWC, vectors
of channels, fp32 FMAs on widened 16-bit operands.

A parallel task is one output row of one image (on a map with fewer rows than the threads
share evenly, a group of the row's channel vectors: `channel_groups`); it runs the row in
tiles of up to TILE output pixels and, per tile, each vector of channels (`lanes` of them:
16 with AVX-512) in turn, so the tile's input pixels are read whole, one after another
(with channel vectors as separate tasks, each read 32 of a pixel's bytes at a stride;
MobileNetV2 bf16's kernels in sequence took 0.99x the time with this order on Zen 4,
alternated in one process). The accumulators stay in
registers while the taps go by: per tap one load of the channel vector per pixel
(16 bits a value with `x_bits`: widened with a zero-extend and a shift), one FMA. Tiles whose
taps all fall inside the image read without checks; the border tiles mask the taps that fall
on the padding (AVX-512: a masked FMA), so every tap is added exactly where the op adds it
and the result equals `reference_depthwise` bit for bit. When TILE does not divide the row,
the last tile moves back to end at the row's end and stores only its own pixels.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm.script import tirx as T

from graphopt.precision_depthwise import DepthwiseSpec, kernel_func, x_value
from graphopt.precision_epilogue import tir_epilogue
from graphopt.precision_ops import tir_store_value, tir_widen
from graphopt.targets.cpu.precision.cvt_bf16 import CVT_IR, bf16_bits
from graphopt.targets.cpu.precision.cvt_bf16 import LANES as CVT_LANES
from graphopt.targets.cpu.precision.row_chunks import target_threads
from graphopt.targets.cpu.schedules.common import divisors, vector_width
from graphopt.targets.cpu.sparse.kernels import row_tile

TILE = 8  # output pixels per register tile
LAYOUT = "cpu"
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


def row_macro(spec: DepthwiseSpec, lanes: int, cvt: bool):
    """(macro, vector width, cvt used): the macro runs one output row of `spec`,
    one_row(x, w, bias, out, img, row, x_row0, first_vector, vectors): every tile of the row
    over `vectors` channel vectors from `first_vector`, reading input row ih of the image at
    x[img, ih - x_row0] (x may hold only some of the image's rows: a band)."""
    _, _, ow, c = spec.out_shape
    _, h, wd, _ = spec.x_shape
    (kh, kw), (sh, sw), (top, left, _, _) = spec.kernel, spec.strides, spec.pads
    vl = vector_width(c, lanes)
    cvt = cvt and spec.out_bits and spec.precision == "bf16" and vl == CVT_LANES
    tw = row_tile(ow, TILE)
    tiles, prec = -(-ow // tw), spec.precision

    def stored(value):
        return bf16_bits(value, vl) if cvt else tir_store_value(value, spec, vl)

    def first_pixel(tile):
        return T.min(tile * tw, ow - tw) if ow % tw else tile * tw

    def inside(tile):
        """Every tap of the tile's pixels inside the image's columns."""
        p0 = first_pixel(tile)
        return T.And(p0 * sw - left >= 0, (p0 + tw - 1) * sw + kw - 1 - left < wd)

    @T.macro
    def taps(x, w, acc, img, row, x_row0, c0, p0, checked):
        for i in T.unroll(kh):
            ih = T.meta_var(row * sh + i - top)
            if 0 <= ih and ih < h:
                for j in T.unroll(kw):
                    wv = T.meta_var(tir_widen(w[i, j, T.ramp(c0, 1, vl)], prec, vl))
                    for u in T.unroll(tw):
                        iw = T.meta_var((p0 + u) * sw + j - left)
                        col = T.meta_var(T.max(T.min(iw, wd - 1), 0) if checked else iw)
                        xs = T.meta_var(x[img, ih - x_row0, col, T.ramp(c0, 1, vl)])
                        xv = T.meta_var(x_value(xs, spec, vl))
                        if checked:
                            acc[u] = T.Select(T.And(0 <= iw, iw < wd), acc[u] + xv * wv, acc[u])
                        else:
                            acc[u] = acc[u] + xv * wv

    @T.macro
    def one_row(x, w, bias, out, img, row, x_row0, first_vector, vectors):
        acc = T.decl_buffer((tw,), f"float32x{vl}", scope="local")
        for tile, cb in T.grid(tiles, vectors):
            c0 = T.meta_var((first_vector + cb) * vl)
            for u in T.unroll(tw):
                acc[u] = T.broadcast(T.float32(0), vl)
            if inside(tile):
                taps(x, w, acc, img, row, x_row0, c0, first_pixel(tile), False)
            else:
                taps(x, w, acc, img, row, x_row0, c0, first_pixel(tile), True)
            for u in T.unroll(tw):
                if first_pixel(tile) + u >= tile * tw:
                    value = T.meta_var(tir_epilogue(acc[u], spec, bias, None, 0, c0, vl))
                    out[img, row, first_pixel(tile) + u, T.ramp(c0, 1, vl)] = stored(value)

    return one_row, vl, cvt


def channel_groups(rows: int, blocks: int, threads: int) -> int:
    """Into how many groups a row's channel vectors split, so that `rows` x groups tasks
    share `threads` evenly (TVM gives each thread ceil(tasks / threads) consecutive ones): a
    7x7 map in rows alone runs 4 rows on one of 2 threads and 3 on the other. More groups
    only where the busiest thread gets at least 2% fewer vectors."""
    best, best_load = 1, -(-rows // threads) * blocks
    for groups in divisors(blocks)[1:]:
        load = -(-(rows * groups) // threads) * (blocks // groups)
        if load < 0.98 * best_load:
            best, best_load = groups, load
    return best


def depthwise16_kernel(spec: DepthwiseSpec, lanes: int, cvt: bool = False) -> tvm.tirx.PrimFunc:
    """The vectorized kernel of `spec` for `lanes`-wide fp32 vectors (its recipe records it).
    `cvt`: the CPU has AVX512_BF16, so bf16 bit patterns are stored by `vcvtneps2bf16`
    (`cvt_bf16.py`: denormal results become zero)."""
    n, oh, _, c = spec.out_shape
    one_row, vl, cvt = row_macro(spec, lanes, cvt)
    blocks = c // vl
    groups = channel_groups(n * oh, blocks, target_threads())
    per_group = blocks // groups

    @T.macro
    def body(x, w, bias, out):
        for task in T.parallel(n * oh * groups):
            img = T.meta_var(task // (oh * groups))
            row = T.meta_var(task // groups % oh)
            one_row(x, w, bias, out, img, row, 0, task % groups * per_group, per_group)

    @T.macro
    def with_instruction(x, w, bias, out):
        with T.attr(0, "pragma_import_llvm", CVT_IR):
            body(x, w, bias, out)

    built = dataclasses.replace(spec, layout=LAYOUT)
    return kernel_func(with_instruction if cvt else body, built, _ATTRS)
