"""CPU kernels of NCHW int8 conv2d ops (`lower-int8{layout=NCHW}`, the default; ARM).

The GEMM form puts output channels in tile rows (weight words broadcast) and output pixels in
SIMD lanes: a conv task packs one tile [k/kpack, pixels] (window convs read it from a
whole-input im2col, 1x1 convs straight from NCHW). Depthwise convs vectorize over the output
width (when the window sum is exact in fp32, `ConvSpec.fp32_exact`; else the GEMM form).
The shared pieces (schemes, words) are in `kernels.py`; with `layout=NHWC` (x86) the NHWC
kernels replace these.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.targets.cpu.int8.kernels import (
    MIN_TASKS,
    ConvSpec,
    Epilogue,
    Isa,
    _loop,
    _word,
    pack_words,
)

# Depthwise output rows computed together (shared input rows load once).
DW_ROWS = 4


@dataclass(frozen=True)
class ConvPlan:
    """Tile sizes and padded extents of the GEMM form of one conv."""

    isa: Isa
    mr: int
    nr: int
    og_pad: int  # output channels per group, padded to a multiple of mr
    kwords: int  # reduction words per group
    p_pad: int  # output pixels, padded to a multiple of nr * lanes


def conv_plan(spec: ConvSpec, isa: Isa) -> ConvPlan:
    oh, ow = spec.out_hw
    pixels = oh * ow
    og = spec.cout // spec.groups
    nr = max(1, min(4, -(-pixels // isa.lanes), isa.accumulators // 4))
    mr = max(1, min(isa.accumulators // nr, og))
    og_pad = -(-og // mr) * mr
    kwords = -(-spec.k_group // isa.kpack)
    step = nr * isa.lanes
    return ConvPlan(isa, mr, nr, og_pad, kwords, -(-pixels // step) * step)


def pack_conv_weight(w: np.ndarray, spec: ConvSpec, plan: ConvPlan) -> np.ndarray:
    """OIHW int8 weights -> int32 words [groups, og_pad, kwords] (zero rows for padding)."""
    og = spec.cout // spec.groups
    flat = w.reshape(spec.groups, og, spec.k_group).astype(np.int32)
    padded = np.zeros((spec.groups, plan.og_pad, spec.k_group), np.int32)
    padded[:, :og] = flat
    return pack_words(padded, plan.isa.kpack)


def _conv_geometry(spec: ConvSpec, plan: ConvPlan) -> SimpleNamespace:
    """The sizes one NCHW conv kernel is generated from (its spec and plan, derived)."""
    isa = plan.isa
    g = SimpleNamespace(
        n=spec.batch, cin=spec.cin, h=spec.height, w=spec.width, cout=spec.cout,
        groups=spec.groups, cg=spec.cin // spec.groups, kh=spec.kh, kw=spec.kw,
        og=spec.cout // spec.groups, ogp=plan.og_pad, kwords=plan.kwords, pp=plan.p_pad,
        mr=plan.mr, nr=plan.nr, lanes=isa.lanes, kpack=isa.kpack, kgroup=spec.k_group,
        off=isa.offset(spec.act_dtype), pointwise=spec.pointwise, act_dtype=spec.act_dtype,
    )  # fmt: skip
    g.oh, g.ow = spec.out_hw
    g.pix = g.oh * g.ow
    (g.sh, g.sw), (g.dh, g.dw) = spec.stride, spec.dilation
    g.pt, g.pl = spec.padding[0], spec.padding[1]
    g.hp, g.wp = g.h + g.pt + spec.padding[2], g.w + g.pl + spec.padding[3]
    g.padded = g.hp != g.h or g.wp != g.w
    g.step = g.nr * g.lanes
    g.row_tiles, g.col_tiles = g.ogp // g.mr, g.pp // g.step
    g.full_rows = g.og % g.mr == 0
    g.tasks_per_image = g.groups * g.col_tiles
    row_chunks = max(1, min(g.row_tiles, -(-MIN_TASKS // (g.n * g.tasks_per_image))))
    g.chunk = -(-g.row_tiles // row_chunks)
    g.row_chunks = -(-g.row_tiles // g.chunk)
    # Pointwise convs pack each task's tile themselves unless several tasks share a column
    # tile (few pixels, many output channels): then the words are packed once, up front.
    g.packed = not g.pointwise or g.row_chunks > 1
    # With one column tile the packed rows are the tile; with several, each task copies its
    # tile out first (contiguous: the rows of a strided tile spill out of L1 on AVX2).
    g.direct = g.packed and g.col_tiles == 1
    g.par = _loop(g.n * g.cout * g.pix * g.kgroup)
    return g


def _conv_words(g: SimpleNamespace):
    """TIR: an im2col word of a window (from x or its padded copy), a word of channels."""
    kpack, off = g.kpack, g.off

    def window_word(src, b, gr, kq, oy, ox):
        """One im2col word; k beyond the group reads any valid tap (its weight is zero)."""
        vals = []
        for j in range(kpack):
            k = T.min(kq * kpack + j, g.kgroup - 1)
            c, ry, rx = k // (g.kh * g.kw), k % (g.kh * g.kw) // g.kw, k % g.kw
            tap = src[b, gr * g.cg + c, oy * g.sh + ry * g.dh, ox * g.sw + rx * g.dw]
            vals.append(T.Cast("int32", tap) + off)
        return _word(vals, kpack)

    def channel_word(xf, b, gr, kq, p):
        vals = []
        for j in range(kpack):
            k = T.min(kq * kpack + j, g.kgroup - 1)
            vals.append(T.Cast("int32", xf[b, gr * g.cg + k, p]) + off)
        return _word(vals, kpack)

    return window_word, channel_word


def _conv_im2col(g: SimpleNamespace, zp: int):
    """TIR macro: the packed activation words of the whole input up front (window convs, and
    pointwise convs whose column tiles several tasks share), pixels padded to the tile width
    (pad columns read as 0). Window convs read a zero-point-padded copy of x when padded."""
    window_word, channel_word = _conv_words(g)
    n, groups, kwords, cin, oh, ow, par = g.n, g.groups, g.kwords, g.cin, g.oh, g.ow, g.par

    @T.macro
    def windows(src, cols):
        for task in par(n * groups * kwords * oh):
            b = T.meta_var(task // (groups * kwords * oh))
            gr = T.meta_var(task // (kwords * oh) % groups)
            kq = T.meta_var(task // oh % kwords)
            for ox in range(ow):
                cols[b, gr, kq, task % oh * ow + ox] = window_word(src, b, gr, kq, task % oh, ox)

    @T.macro
    def im2col(x, xf, cols):
        if g.packed:
            for task in par(n * groups * kwords):
                for p in range(g.pix, g.pp):
                    cols[task // (groups * kwords), task // kwords % groups, task % kwords, p] = 0
        if g.pointwise and g.packed:
            for task in par(n * groups * kwords):
                b = T.meta_var(task // (groups * kwords))
                gr = T.meta_var(task // kwords % groups)
                for p in range(g.pix):
                    cols[b, gr, task % kwords, p] = channel_word(xf, b, gr, task % kwords, p)
        if not g.pointwise:
            if g.padded:
                xp = T.decl_buffer((n, cin, g.hp, g.wp), g.act_dtype)
                for bc in par(n * cin):
                    for iy, ix in T.grid(g.hp, g.wp):
                        xp[bc // cin, bc % cin, iy, ix] = T.Cast(g.act_dtype, zp)
                    for iy, ix in T.grid(g.h, g.w):
                        xp[bc // cin, bc % cin, iy + g.pt, ix + g.pl] = x[
                            bc // cin, bc % cin, iy, ix
                        ]
                windows(xp, cols)
            else:
                windows(x, cols)

    return im2col


def _conv_tile(g: SimpleNamespace):
    """TIR macro: a task's column tile of words, copied from the packed input, or (pointwise
    convs packing per task) packed here from all channels of the group."""
    _window_word, channel_word = _conv_words(g)
    kwords, step, pix = g.kwords, g.step, g.pix

    @T.macro
    def load_tile(xf, cols, tile, b, gr, p0):
        if g.packed and not g.direct:
            for kq, j in T.grid(kwords, step):
                tile[kq, j] = cols[b, gr, kq, p0 + j]
        if not g.packed:
            if p0 + step <= pix:
                for kq, j in T.grid(kwords, step):
                    tile[kq, j] = channel_word(xf, b, gr, kq, p0 + j)
            else:
                for kq, j in T.grid(kwords, step):
                    tile[kq, j] = channel_word(xf, b, gr, kq, T.min(p0 + j, pix - 1))

    return load_tile


def _conv_gemm(g: SimpleNamespace, isa: Isa, ep: Epilogue):
    """TIR macro: a task's output-channel tiles: the mr x nr register tile over all words,
    then the epilogue per output vector (the tail vector's valid pixels only)."""
    mr, nr, lanes, pix, og, ogp = g.mr, g.nr, g.lanes, g.pix, g.og, g.ogp

    def act_words(cols, tile, b, gr, kq, p0, u):
        if g.direct:
            return cols[b, gr, kq, T.ramp(p0 + u * lanes, 1, lanes)]
        return tile[kq, T.ramp(u * lanes, 1, lanes)]

    @T.macro
    def gemm(cols, tile, wq, acc, tail, corr, scale, fbias, of, b, gr, p0, rc):
        for rt in range(rc * g.chunk, T.min(rc * g.chunk + g.chunk, g.row_tiles)):
            for i in T.unroll(mr * nr):
                acc[i] = T.broadcast(T.int32(0), lanes)
            for kq in range(g.kwords):
                for u in T.unroll(nr):
                    for r in T.unroll(mr):
                        acc[r * nr + u] = isa.dot(
                            acc[r * nr + u],
                            act_words(cols, tile, b, gr, kq, p0, u),
                            T.broadcast(wq[gr, rt * mr + r, kq], lanes),
                        )
            for r in T.unroll(mr):
                if g.full_rows or rt * mr + r < og:
                    ch = T.meta_var(gr * ogp + rt * mr + r)
                    for u in T.unroll(nr):
                        if p0 + u * lanes + lanes <= pix:
                            of[b, gr * og + rt * mr + r, T.ramp(p0 + u * lanes, 1, lanes)] = (
                                _channel_epilogue(
                                    ep, acc[r * nr + u], corr, scale, fbias, ch, lanes
                                )
                            )
                        else:
                            tail[T.ramp(0, 1, lanes)] = _channel_epilogue(
                                ep, acc[r * nr + u], corr, scale, fbias, ch, lanes
                            )
                            for lane in range(T.max(0, T.min(lanes, pix - p0 - u * lanes))):
                                of[b, gr * og + rt * mr + r, p0 + u * lanes + lane] = tail[lane]

    return gemm


def conv2d_kernel(spec: ConvSpec, plan: ConvPlan, zp: int, ep: Epilogue) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w_words, corr, scale, fbias, out): im2col into words, GEMM, epilogue.

    `zp` is the input zero point (what padding reads). Output channels are the tile rows
    (weight words broadcast), output pixels the tile columns (activation words in lanes).
    Steps: `_conv_im2col` (the whole input, when packed up front), then per task a column tile
    (`_conv_tile`) times a chunk of output-channel tiles (`_conv_gemm`).
    """
    g = _conv_geometry(spec, plan)
    n, groups, ogp, kwords, lanes = g.n, g.groups, g.ogp, g.kwords, g.lanes
    im2col, load_tile = _conv_im2col(g, zp), _conv_tile(g)
    gemm = _conv_gemm(g, plan.isa, ep)
    cols_shape = (n, groups, kwords, g.pp) if g.packed else (1, 1, 1, 1)

    @T.prim_func
    def conv(
        x: T.Buffer((n, g.cin, g.h, g.w), spec.act_dtype),
        wq: T.Buffer((groups, ogp, kwords), "int32"),
        corr: T.Buffer((groups * ogp,), "int32"),
        scale: T.Buffer((groups * ogp,), "float32"),
        fbias: T.Buffer((groups * ogp,), "float32"),
        out: T.Buffer((n, g.cout, g.oh, g.ow), ep.out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xf = T.decl_buffer((n, g.cin, g.h * g.w), spec.act_dtype, data=x.data)
        of = T.decl_buffer((n, g.cout, g.pix), ep.out_dtype, data=out.data)
        cols = T.decl_buffer(cols_shape, "int32")
        im2col(x, xf, cols)
        # One task: a column tile (step output pixels) times a chunk of output-channel tiles.
        for task in g.par(n * g.tasks_per_image * g.row_chunks):
            b = T.meta_var(task // (g.tasks_per_image * g.row_chunks))
            gr = T.meta_var(task // (g.col_tiles * g.row_chunks) % groups)
            p0 = T.meta_var(task // g.row_chunks % g.col_tiles * g.step)
            rc = T.meta_var(task % g.row_chunks)
            tile = T.decl_buffer((1, 1) if g.direct else (kwords, g.step), "int32")
            acc = T.decl_buffer((g.mr * g.nr,), f"int32x{lanes}", scope="local")
            tail = T.decl_buffer((lanes,), ep.out_dtype, scope="local")
            load_tile(xf, cols, tile, b, gr, p0)
            gemm(cols, tile, wq, acc, tail, corr, scale, fbias, of, b, gr, p0, rc)

    return conv


def _channel_epilogue(ep: Epilogue, acc, corr, scale, fbias, c, lanes: int):
    """The requantize epilogue of one depthwise channel's vector (per-channel constants)."""
    return ep.tir(
        acc,
        T.broadcast(corr[c], lanes),
        T.broadcast(scale[c], lanes),
        T.broadcast(fbias[c], lanes),
        None,
        lanes,
    )


def _tap_sum(row_at, wt, c, kh: int, kw: int, lanes: int):
    """Sum over the window of input vector x int8 weight (as fp32: exact on integers), as
    int32 lanes; `row_at(ry, rx)` is the input vector under tap (ry, rx)."""
    total = None
    for ry in range(kh):
        for rx in range(kw):
            term = row_at(ry, rx) * T.broadcast(T.Cast("float32", wt[c, ry * kw + rx]), lanes)
            total = term if total is None else total + term
    return T.Cast(f"int32x{lanes}", total)


def _phase_planes(spec: ConvSpec, zp: int, hp: int, pw: int):
    """TIR macro: one channel of x minus the zero point, as fp32, split into `stride` column
    phases of a zero-padded plane [sw, hp, pw]. Zeros only around the input (a stride-2 plane
    is 4x the int8 input: filling it all cost as much as the copy)."""
    h, w, sw = spec.height, spec.width, spec.stride[1]
    pt, pl = spec.padding[0], spec.padding[1]

    def col_lo(ph):  # first plane column of phase ph holding an input column
        return T.max(0, (pl - ph + sw - 1) // sw)

    def col_hi(ph):
        return T.min(pw, (w - 1 + pl - ph) // sw + 1)

    @T.macro
    def fill_plane(x, plane, b, c):
        for ph in T.unroll(sw):
            for iy in range(hp):
                if iy < pt or iy >= h + pt:
                    for ix in range(pw):
                        plane[ph, iy, ix] = T.float32(0)
                else:
                    for ix in range(col_lo(ph)):
                        plane[ph, iy, ix] = T.float32(0)
                    for ix in range(col_hi(ph), pw):
                        plane[ph, iy, ix] = T.float32(0)
                    # Plane column j of phase ph holds input column j * sw + ph - pl.
                    for j in range(col_lo(ph), col_hi(ph)):
                        plane[ph, iy, j] = T.Cast(
                            "float32", T.Cast("int32", x[b, c, iy - pt, j * sw + ph - pl]) - zp
                        )

    return fill_plane


def depthwise_kernel(spec: ConvSpec, isa: Isa, zp: int, ep: Epilogue) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w int8 [C, KH*KW], corr, scale, fbias, out) for groups == C_in == C_out.

    Per channel: a padded plane of (x - zp) (so padding and zero point vanish exactly), split
    into `stride` column phases so every tap is a contiguous vector load; output width in
    lanes, all taps unrolled. With 9 taps per output a dot instruction has nothing to reduce,
    and int32 multiplies (vpmulld) are slow, so the sums run as fp32 FMAs on integer values:
    exact while |sum| < 2^24 (`ConvSpec.fp32_exact`: kh * kw * 255 * 128 stays below it), then
    converted to int32 for the usual epilogue. The weights stay int8 in the artifact and are
    converted per channel (a quarter of the bytes of fp32 weights; no measurable cost).
    """
    if spec.stride == (1, 1) and spec.out_hw[1] <= isa.lanes:  # narrow rows: see there
        return _depthwise_flat_kernel(spec, isa, zp, ep)
    lanes = isa.lanes
    n, ch_n, h, w = spec.batch, spec.cin, spec.height, spec.width
    kh, kw = spec.kh, spec.kw
    oh, ow = spec.out_hw
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pt, pl = spec.padding[0], spec.padding[1]
    owp = -(-ow // lanes) * lanes
    rows = DW_ROWS  # output rows per step: their taps share input rows (loaded once)
    ohp = -(-oh // rows) * rows
    hp = max(h + pt + spec.padding[2], (ohp - 1) * sh + (kh - 1) * dh + 1)
    pw = max(owp + (kw - 1) * dw // sw + 1, (w + pl) // sw + 1)

    fill_plane = _phase_planes(spec, zp, hp, pw)

    def taps(plane, wt, c, oy, xo):
        def row_at(ry, rx):
            return plane[(rx * dw) % sw, oy * sh + ry * dh, T.ramp(xo + rx * dw // sw, 1, lanes)]

        return _tap_sum(row_at, wt, c, kh, kw, lanes)

    @T.prim_func
    def depthwise(
        x: T.Buffer((n, ch_n, h, w), spec.act_dtype),
        wt: T.Buffer((ch_n, kh * kw), "int8"),
        corr: T.Buffer((ch_n,), "int32"),
        scale: T.Buffer((ch_n,), "float32"),
        fbias: T.Buffer((ch_n,), "float32"),
        out: T.Buffer((n, ch_n, oh, ow), ep.out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bc in _loop(4 * n * ch_n * oh * ow * kh * kw)(n * ch_n):
            b = T.meta_var(bc // ch_n)
            c = T.meta_var(bc % ch_n)
            plane = T.decl_buffer((sw, hp, pw), "float32")
            tail = T.decl_buffer((lanes,), ep.out_dtype, scope="local")
            fill_plane(x, plane, b, c)
            for oyb, xb in T.grid(ohp // rows, owp // lanes):
                acc = T.decl_buffer((rows,), f"int32x{lanes}", scope="local")
                for r in T.unroll(rows):
                    acc[r] = taps(plane, wt, c, oyb * rows + r, xb * lanes)
                for r in T.unroll(rows):
                    if oyb * rows + r < oh:
                        if xb * lanes + lanes <= ow:
                            out[b, c, oyb * rows + r, T.ramp(xb * lanes, 1, lanes)] = (
                                _channel_epilogue(ep, acc[r], corr, scale, fbias, c, lanes)
                            )
                        else:
                            # Narrow rows (ow < lanes: the 7x7 and 14x14 layers) are all tail:
                            # the vector epilogue, then only the valid lanes are stored.
                            tail[T.ramp(0, 1, lanes)] = _channel_epilogue(
                                ep, acc[r], corr, scale, fbias, c, lanes
                            )
                            for lane in range(T.min(lanes, ow - xb * lanes)):
                                out[b, c, oyb * rows + r, xb * lanes + lane] = tail[lane]

    return depthwise


def _depthwise_flat_kernel(spec: ConvSpec, isa: Isa, zp: int, ep: Epilogue):
    """Stride-1 depthwise over the flattened padded plane (same signature and math).

    With the plane's rows `rs` = w + pl + pr apart, output (oy, ox) sits at flat position
    oy * rs + ox and tap (ry, rx) at a constant offset from it, so vectors run over flat
    positions regardless of the row width: a 7x7 channel is 4 vectors of 16 (one per row,
    9 of 16 lanes idle, in the row kernel). Positions with ox >= ow are computed and dropped
    when the rows are copied out of the (requantized) result. Used for rows no wider than a
    vector (1.4-1.7x the row kernel on the 7x7 and 14x14 layers; slower on wide rows).
    """
    lanes = isa.lanes
    n, ch_n, h, w = spec.batch, spec.cin, spec.height, spec.width
    kh, kw = spec.kh, spec.kw
    oh, ow = spec.out_hw
    dh, dw = spec.dilation
    pt, pl, pb, pr = spec.padding
    rs = w + pl + pr
    group = DW_ROWS  # vectors computed together (independent FMA chains)
    nvec = -(-(oh * rs) // lanes)
    rest = nvec % group  # the last vectors, fewer than a group
    reach = (kh - 1) * dh * rs + (kw - 1) * dw
    plane_len = max(nvec * lanes + reach, (h + pt + pb) * rs)

    def requant(acc, corr, scale, fbias, c):
        return _channel_epilogue(ep, acc, corr, scale, fbias, c, lanes)

    def taps(plane, wt, c, p0):
        def row_at(ry, rx):
            return plane[T.ramp(p0 + ry * dh * rs + rx * dw, 1, lanes)]

        return _tap_sum(row_at, wt, c, kh, kw, lanes)

    @T.prim_func
    def depthwise(
        x: T.Buffer((n, ch_n, h, w), spec.act_dtype),
        wt: T.Buffer((ch_n, kh * kw), "int8"),
        corr: T.Buffer((ch_n,), "int32"),
        scale: T.Buffer((ch_n,), "float32"),
        fbias: T.Buffer((ch_n,), "float32"),
        out: T.Buffer((n, ch_n, oh, ow), ep.out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bc in _loop(4 * n * ch_n * oh * ow * kh * kw)(n * ch_n):
            b = T.meta_var(bc // ch_n)
            c = T.meta_var(bc % ch_n)
            plane = T.decl_buffer((plane_len,), "float32")
            res = T.decl_buffer((nvec * lanes,), ep.out_dtype)
            for i in range(plane_len):
                plane[i] = T.float32(0)
            for iy, ix in T.grid(h, w):
                plane[(iy + pt) * rs + ix + pl] = T.Cast(
                    "float32", T.Cast("int32", x[b, c, iy, ix]) - zp
                )
            for vb in range(nvec // group):
                acc = T.decl_buffer((group,), f"int32x{lanes}", scope="local")
                for u in T.unroll(group):
                    acc[u] = taps(plane, wt, c, (vb * group + u) * lanes)
                for u in T.unroll(group):
                    p0 = T.meta_var((vb * group + u) * lanes)
                    res[T.ramp(p0, 1, lanes)] = requant(acc[u], corr, scale, fbias, c)
            for u in T.unroll(rest):
                res[T.ramp((nvec - rest + u) * lanes, 1, lanes)] = requant(
                    taps(plane, wt, c, (nvec - rest + u) * lanes), corr, scale, fbias, c
                )
            for oy, ox in T.grid(oh, ow):
                out[b, c, oy, ox] = res[oy * rs + ox]

    return depthwise
