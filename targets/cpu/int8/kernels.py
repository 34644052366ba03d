"""CPU int8 kernels of the int8 ops (`graphopt.int8_ops`): matmul, NHWC window convs, add.

`materialize-int8` builds these for the target's dot-product scheme; every kernel is written
directly in low-level TIR (already scheduled: `schedule-cpu` skips it) around one
register-tiled micro-kernel whose inner step is a single SIMD "dot" instruction:

    isa      lanes  k per 32-bit word  instruction                         activation domain
    vnni     16     4 (bytes)          vpdpbusd zmm (u8 x s8 -> s32)        u8 (int8 + 128)
    avx2     8      2 (int16 halves)   vpmaddwd ymm (s16 x s16 -> s32)      as is (exact)
    sdot     4      4 (bytes)          sdot v.4s (s8 x s8 -> s32, ARM)      s8 (uint8 - 128)
    generic  4      1                  plain int32 multiply-add             as is

Activations are packed into 32-bit "words" of `kpack` reduction values, per parallel task:
a matmul task packs its rows [rows, k/kpack] (vector loads). NHWC convs are this matmul: a
1x1 conv over pixels, other convs over their windows, packed from NHWC per row by
`_window_words`. Constant int8 weights are packed the same way in numpy (`pack_*`) when the
kernel is materialized. This file holds the schemes, words, the matmul and the int8 add; the
NCHW conv kernels are in `conv_nchw.py`, the channel-last depthwise kernel (no dot
instruction) in `depthwise_nhwc.py`, the image quantize in `quantize_nhwc.py`, and what
builds and packs them per op in `materialize.py`.

A domain shift (vnni: +128, sdot: -128) makes the activations fit the instruction; it is
undone exactly by the zero-point correction: the kernels take `corr - off * sum_k w` where the
op has `corr`. Padding reads the zero point (shifted likewise), so padded taps contribute
exactly what they do in the op definition. The epilogues are the ops' (`Epilogue.tir`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt import _tvm
from graphopt.errors import PipelineError
from graphopt.int8_ops import (  # noqa: F401 - the op types, re-exported for the CPU kernels
    AddSpec,
    ConvSpec,
    Epilogue,
    MatmulSpec,
    add_value,
    row_count,
    tir_shape,
)

# --------------------------------------------------------------------------------------------
# Instruction sets


@dataclass(frozen=True)
class Isa:
    """One integer dot-product scheme: vector width, packing and the instruction."""

    name: str
    lanes: int  # int32 accumulator lanes per SIMD register
    kpack: int  # reduction values per 32-bit word
    accumulators: int  # SIMD registers a register tile may use for accumulators
    domain: str  # "u8", "s8" or "wide": what the activation operand must be

    def offset(self, act_dtype: str) -> int:
        """Added to activation values (and their zero point) to reach the operand domain."""
        if self.domain == "u8" and act_dtype == "int8":
            return 128
        if self.domain == "s8" and act_dtype == "uint8":
            return -128
        return 0

    def dot(self, acc, act, wt):
        """acc + sum over each word's kpack products; act / wt are int32xL word vectors."""
        n = self.lanes
        if self.name == "vnni":
            return T.call_llvm_pure_intrin(
                f"int32x{n}",
                "llvm.x86.avx512.vpdpbusd.512",
                acc,
                T.reinterpret(f"int8x{4 * n}", act),
                T.reinterpret(f"int8x{4 * n}", wt),
            )
        if self.name == "avx2":
            return acc + T.call_llvm_pure_intrin(
                f"int32x{n}",
                "llvm.x86.avx2.pmadd.wd",
                T.reinterpret(f"int16x{2 * n}", act),
                T.reinterpret(f"int16x{2 * n}", wt),
            )
        if self.name == "sdot":
            return T.call_llvm_pure_intrin(
                f"int32x{n}",
                "llvm.aarch64.neon.sdot.v4i32.v16i8",
                acc,
                T.reinterpret(f"int8x{4 * n}", act),
                T.reinterpret(f"int8x{4 * n}", wt),
            )
        return acc + act * wt


ISAS = {
    "vnni": Isa("vnni", 16, 4, 24, "u8"),
    "avx2": Isa("avx2", 8, 2, 12, "wide"),
    "sdot": Isa("sdot", 4, 4, 24, "s8"),
    "generic": Isa("generic", 4, 1, 12, "wide"),
}

# The instruction each scheme's inner loop must contain (checked in the generated assembly).
ASM_MARKER = {"vnni": "vpdpbusd", "avx2": "vpmaddwd", "sdot": "sdot"}


def isa_for_target(target: tvm.target.Target) -> Isa:
    """The best scheme the target's CPU features allow."""
    from tvm.target import codegen

    features = set(codegen.llvm_get_cpu_features(target))
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple.startswith(("aarch64", "arm64")):
        return ISAS["sdot"] if "dotprod" in features else ISAS["generic"]
    if {"avx512vnni", "avx512bw", "avx512f"} <= features:
        return ISAS["vnni"]
    if "avx2" in features:
        return ISAS["avx2"]
    return ISAS["generic"]


def resolve_isa(name: str) -> Isa:
    """The scheme an `isa=` option names; `auto`: the current target's, else this host's."""
    if name == "auto":
        target = tvm.target.Target.current(allow_none=True)
        if target is None or target.kind.name != "llvm":
            target = _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
        return isa_for_target(target)
    if name not in ISAS:
        raise PipelineError(f"unknown isa '{name}' (auto, {', '.join(ISAS)})")
    return ISAS[name]


def pack_words(values: np.ndarray, kpack: int) -> np.ndarray:
    """Pack the last axis (int8 values, zero-padded to a multiple of kpack) into int32 words."""
    k = values.shape[-1]
    kw = -(-k // kpack)
    padded = np.zeros((*values.shape[:-1], kw * kpack), np.int32)
    padded[..., :k] = values
    if kpack == 1:
        return padded
    narrow = np.int8 if kpack == 4 else np.int16
    return np.ascontiguousarray(padded.astype(narrow)).view(np.int32)


def _word(vals: list, kpack: int):
    """TIR: pack kpack int32 values (already in the operand domain) into one int32 word."""
    if kpack == 1:
        return vals[0]
    bits = 32 // kpack
    mask = (1 << bits) - 1

    def field(v, j: int):
        if isinstance(v, (int, tvm.tirx.IntImm)):  # a constant (padding): shift it in Python,
            c = (int(v) & mask) << (bits * j)  # where a top byte >= 128 cannot overflow int32
            return T.int32(c - (1 << 32) if c >= 1 << 31 else c)
        return (v & mask) << (bits * j) if j else v & mask

    word = field(vals[0], 0)
    for j in range(1, kpack):
        word = word | field(vals[j], j)
    return word


# Parallel tasks a kernel aims for (more than any core count here; tiny layers get fewer).
MIN_TASKS = 8

# Kernels with less work than this run their loops serially: waking the runtime's sleeping
# workers costs ~10 us a parallel region, more than a tiny layer computes (the bundled digits
# model ran 3.5x slower on 2 threads than on 1). Work is in dot-product multiply-adds (~1M:
# ~20 us on one core); depthwise multiply-adds count 4x and add elements 16x (slower each).
PARALLEL_MIN_WORK = 1 << 20


def _loop(work):
    """T.parallel for kernels worth splitting, else T.serial (work symbolic: parallel)."""
    return T.parallel if not isinstance(work, int) or work >= PARALLEL_MIN_WORK else T.serial


def _work(rows, k: int, n: int) -> int:
    """A matmul's multiply-adds; symbolic rows count as many (a kernel that may be large
    runs in parallel)."""
    return rows * k * n if isinstance(rows, int) else PARALLEL_MIN_WORK


# fp32 values a fused-quantization matmul reads and quantizes at a time (two AVX2 registers).
FUSED_QUANT_LANES = 16

# --------------------------------------------------------------------------------------------
# matmul: x[..., M, K] (int8 / uint8) @ W[K, N] (int8 constant)


@dataclass(frozen=True)
class MatmulPlan:
    isa: Isa
    mr: int
    nr: int
    kwords: int
    rows_pad: int  # 0 for symbolic rows
    n_pad: int  # N padded to a multiple of nr * lanes (one weight panel each)


def matmul_plan(spec: MatmulSpec, isa: Isa) -> MatmulPlan:
    # The widest panel (nr vectors of output channels) that pads N least: 96 channels are
    # 2 panels of 3 vectors, not 2 of 4 with a quarter computed and dropped.
    widest = max(1, min(4, -(-spec.n // isa.lanes), isa.accumulators // 4))
    nr = min(range(widest, 0, -1), key=lambda v: -(-spec.n // (v * isa.lanes)) * v)
    symbolic = isinstance(spec.rows, str)  # any row count: the whole register tile
    mr = isa.accumulators // nr if symbolic else max(1, min(isa.accumulators // nr, spec.rows))
    step = nr * isa.lanes
    kwords = -(-spec.k // isa.kpack)
    rows_pad = 0 if symbolic else -(-spec.rows // mr) * mr
    return MatmulPlan(isa, mr, nr, kwords, rows_pad, -(-spec.n // step) * step)


def pack_matmul_weight(w: np.ndarray, plan: MatmulPlan) -> np.ndarray:
    """[K, N] int8 -> int32 word panels [n_pad / step, kwords, step] (zero-padded)."""
    k, n = w.shape
    step = plan.nr * plan.isa.lanes
    padded = np.zeros((plan.n_pad, k), np.int32)
    padded[:n] = w.T
    words = pack_words(padded, plan.isa.kpack)  # [n_pad, kwords]
    return np.ascontiguousarray(words.reshape(-1, step, plan.kwords).transpose(0, 2, 1))


@dataclass(frozen=True)
class _Geometry:
    """The sizes one matmul kernel is generated from (its spec and plan, derived). With
    symbolic rows, `rows`, `row_tiles`, `col_chunks` and `chunk` are expressions of them."""

    rows: int | tvm.tirx.PrimExpr
    k: int
    n: int
    kwords: int
    mr: int
    nr: int
    lanes: int
    kpack: int
    off: int  # added to activations to reach the scheme's operand domain
    col_tiles: int
    row_tiles: int | tvm.tirx.PrimExpr
    col_chunks: int | tvm.tirx.PrimExpr  # column-tile chunks per row tile (parallel tasks)
    chunk: int | tvm.tirx.PrimExpr  # column tiles per task

    @property
    def step(self) -> int:
        return self.nr * self.lanes


def _geometry(spec: MatmulSpec, plan: MatmulPlan, rows) -> _Geometry:
    """`rows`: the row count, an expression of size vars when `spec.rows` is symbolic."""
    isa, mr, step = plan.isa, plan.mr, plan.nr * plan.isa.lanes
    col_tiles = plan.n_pad // step
    if isinstance(rows, int):
        row_tiles = plan.rows_pad // mr
        col_chunks = max(1, min(col_tiles, -(-MIN_TASKS // row_tiles)))
        chunk = -(-col_tiles // col_chunks)
    else:  # the same plan, computed at run time
        row_tiles = (rows + mr - 1) // mr
        col_chunks = T.max(1, T.min(col_tiles, (MIN_TASKS + row_tiles - 1) // row_tiles))
        chunk = (col_tiles + col_chunks - 1) // col_chunks
    return _Geometry(
        rows,
        spec.k,
        spec.n,
        plan.kwords,
        mr,
        plan.nr,
        isa.lanes,
        isa.kpack,
        isa.offset(spec.act_dtype),
        col_tiles,
        row_tiles,
        -(-col_tiles // chunk) if isinstance(chunk, int) else (col_tiles + chunk - 1) // chunk,
        chunk,
    )


def _packed(kpack: int):
    """int32 values -> words of kpack narrow values (TIR; the values already in domain)."""
    narrow = {4: "int8", 2: "int16", 1: "int32"}[kpack]

    def packed(q, values: int):
        if kpack == 1:
            return q
        return T.reinterpret(f"int32x{values // kpack}", T.Cast(f"{narrow}x{values}", q))

    return packed


def _plain_rows(g: _Geometry):
    """TIR macro: mr rows of x (int8 / uint8) into words, rows past the end repeating the last.

    Whole vectors of values at a time (for int8 on vnni the +128 is one xor per word), the
    widest power-of-two number of words (up to a register) that divides K, so K = 16 or 24
    still packs with vectors; the last K % pack_values one by one."""
    rows, k, kpack, off = g.rows, g.k, g.kpack, g.off
    pack_words_n = g.lanes
    while pack_words_n > 1 and k % (pack_words_n * kpack):
        pack_words_n //= 2
    vector_pack = pack_words_n > 1
    pack_words_n = max(pack_words_n, 2)  # (a ramp needs 2 lanes; unused when not vector_pack)
    pack_values = pack_words_n * kpack
    packed = _packed(kpack)

    def value(xf, m, kk):
        inside = tvm.tirx.all(m < rows, kk < k)
        return T.if_then_else(inside, T.Cast("int32", xf[T.min(m, rows - 1), kk]) + off, T.int32(0))

    @T.macro
    def pack_rows(x, xf, words, rs, vmax, m0):
        for r in range(g.mr):
            for kb in range(k // pack_values if vector_pack else 0):
                words[r, T.ramp(kb * pack_words_n, 1, pack_words_n)] = packed(
                    T.Cast(
                        f"int32x{pack_values}",
                        xf[T.min(m0 + r, rows - 1), T.ramp(kb * pack_values, 1, pack_values)],
                    )
                    + T.broadcast(T.int32(off), pack_values),
                    pack_values,
                )
            for kq in range(k // pack_values * pack_words_n if vector_pack else 0, g.kwords):
                words[r, kq] = _word(
                    [value(xf, m0 + r, kq * kpack + j) for j in range(kpack)], kpack
                )

    return pack_rows


def _fused_rows(g: _Geometry, spec: MatmulSpec):
    """TIR macro: mr fp32 rows quantized with their own scales (rs) while packed into words.

    scale = max(max|x|, eps) / qmax per row; q = clamp(round_half_even(x / scale)) + off, like
    TVM's quantize legalization. Rows past the end repeat the last row: computed, never stored.
    """
    rows, k, kpack, off, qv = g.rows, g.k, g.kpack, g.off, FUSED_QUANT_LANES
    kvec = k // qv * qv  # reduction values quantized qv at a time; the rest one by one
    packed = _packed(kpack)

    def quant(v, s, n: int):
        i32 = "int32" if n == 1 else f"int32x{n}"
        c = (lambda a: T.float32(a)) if n == 1 else (lambda a: T.broadcast(T.float32(a), n))
        q = T.min(T.max(T.round(v / (s if n == 1 else T.broadcast(s, n))), c(-128.0)), c(127.0))
        return T.Cast(i32, q) + (T.int32(off) if n == 1 else T.broadcast(off, n))

    def fused_value(xf, m, kk, s):
        return T.if_then_else(kk < k, quant(xf[m, T.min(kk, k - 1)], s, 1), T.int32(0))

    @T.macro
    def pack_rows(x, xf, words, rs, vmax, m0):
        for r in range(g.mr):
            vmax[T.ramp(0, 1, qv)] = T.broadcast(T.float32(0), qv)
            for kb in range(kvec // qv):
                vmax[T.ramp(0, 1, qv)] = T.max(
                    vmax[T.ramp(0, 1, qv)],
                    T.fabs(xf[T.min(m0 + r, rows - 1), T.ramp(kb * qv, 1, qv)]),
                )
            rs[r] = T.float32(0)
            for j in range(qv):
                rs[r] = T.max(rs[r], vmax[j])
            for kk in range(kvec, k):
                rs[r] = T.max(rs[r], T.fabs(xf[T.min(m0 + r, rows - 1), kk]))
            rs[r] = T.max(rs[r], T.float32(spec.eps)) / T.float32(spec.qmax)
            for kb in range(kvec // qv):
                words[r, T.ramp(kb * (qv // kpack), 1, qv // kpack)] = packed(
                    quant(xf[T.min(m0 + r, rows - 1), T.ramp(kb * qv, 1, qv)], rs[r], qv), qv
                )
            for kq in range(kvec // kpack, g.kwords):
                words[r, kq] = _word(
                    [
                        fused_value(xf, T.min(m0 + r, rows - 1), kq * kpack + j, rs[r])
                        for j in range(kpack)
                    ],
                    kpack,
                )

    return pack_rows


def _window_rows(g: _Geometry, window: ConvSpec, isa: Isa, zp: int, sizes: tuple):
    """TIR macro: the windows of mr output pixels (rows) into words, unrolled over a small
    window's words (tap offsets become constants). `sizes`: h, w, oh, ow (ints, or
    expressions of x's size vars)."""
    window_word = _window_words(window, isa, zp, sizes)

    _h, _w, oh, ow = sizes

    @T.macro
    def pack_rows(x, xf, words, rs, vmax, m0):
        for r in range(g.mr):
            # the pixel's (image, row, column) once per row, not per word: with a symbolic
            # image size these are integer divisions (the stem conv ran 2.8x its static time)
            m = T.meta_var(T.min(m0 + r, g.rows - 1))
            pb = m // (oh * ow)
            py = m // ow % oh
            px = m % ow
            for kq in (T.unroll if g.kwords <= 64 else T.serial)(g.kwords):
                words[r, kq] = window_word(x, (pb, py, px), kq)

    return pack_rows


def tile_store(g: _Geometry, spec: MatmulSpec, ep: Epilogue):
    """TIR macro: the epilogue of an mr x nr register tile whose first column tile is `c`,
    stored per output vector (the tail vector's valid lanes only). Shared by the dense and
    the block-sparse (`sparse.py`, nr = 1) matmuls."""
    mr, nr, lanes, n, step = g.mr, g.nr, g.lanes, g.n, g.step
    full_rows = isinstance(g.rows, int) and g.rows % mr == 0

    def row_scale(xs, rs, r, m):
        if spec.fused_quant:
            return rs[r]
        return xs[m] if spec.per_row else xs[()]

    def result(acc, corr, scale, fbias, xs_row, col):
        """The vector epilogue of `acc`, whose first output channel is `col`."""
        chans = T.ramp(col, 1, lanes)
        return ep.tir(
            acc, corr[chans], scale[chans], fbias[chans], T.broadcast(xs_row, lanes), lanes
        )

    @T.macro
    def store(acc, tail, of, corr, scale, fbias, xs, rs, m0, c):
        for r in T.unroll(mr):
            if full_rows or m0 + r < g.rows:
                for u in T.unroll(nr):
                    col = T.meta_var(c * step + u * lanes)
                    xs_row = T.meta_var(row_scale(xs, rs, r, m0 + r))
                    if col + lanes <= n:
                        of[m0 + r, T.ramp(col, 1, lanes)] = result(
                            acc[r * nr + u], corr, scale, fbias, xs_row, col
                        )
                    elif col < n:
                        # Vector epilogue (the constants are padded to n_pad), then only
                        # the valid lanes are stored.
                        tail[T.ramp(0, 1, lanes)] = result(
                            acc[r * nr + u], corr, scale, fbias, xs_row, col
                        )
                        for lane in range(n - col):
                            of[m0 + r, col + lane] = tail[lane]

    return store


def _gemm_tiles(g: _Geometry, isa: Isa, spec: MatmulSpec, ep: Epilogue) -> Gemm:
    """TIR macro: one task's column tiles: the mr x nr register tile over all words, then the
    epilogue per output vector (`_tile_store`)."""
    mr, nr, lanes = g.mr, g.nr, g.lanes
    store = tile_store(g, spec, ep)

    @T.macro
    def gemm(weights, words, acc, tail, of, corr, scale, fbias, xs, rs, m0, c0, chunk):
        for c in range(c0, T.min(c0 + chunk, g.col_tiles)):
            for i in T.unroll(mr * nr):
                acc[i] = T.broadcast(T.int32(0), lanes)
            for kq in range(g.kwords):
                for r in T.unroll(mr):
                    for u in T.unroll(nr):
                        acc[r * nr + u] = isa.dot(
                            acc[r * nr + u],
                            T.broadcast(words[r, kq], lanes),
                            weights[0][c, kq, T.ramp(u * lanes, 1, lanes)],
                        )
            store(acc, tail, of, corr, scale, fbias, xs, rs, m0, c)

    return Gemm(gemm, 1)


@dataclass(frozen=True)
class Gemm:
    """A task's GEMM macro and how many partial sums per accumulator it keeps (`ways`)."""

    run: object
    ways: int


@dataclass(frozen=True)
class KernelParts:
    """What a matmul kernel (dense or block-sparse) is generated from besides its GEMM: the
    geometry, the buffers' shapes and dtypes, and the macro packing a task's rows."""

    g: _Geometry
    shape: tuple
    out_shape: tuple
    xs_shape: tuple
    x_dtype: str
    xf_shape: tuple  # x as [rows, k] (a window conv reads x in NHWC: unused, (1, 1))
    pack_rows: object


def kernel_parts(
    spec: MatmulSpec, plan: MatmulPlan, shape: tuple, zp: int, window: ConvSpec | None
) -> KernelParts:
    """The geometry and row packing of `matmul_kernel`'s arguments (see there)."""
    shape = tir_shape(shape)  # symbolic rows (or batch, height, width): size vars
    if window is None:
        rows, out_hw = row_count(shape), None
    else:  # output pixels; out_hw an expression of x's size vars when they are symbolic
        out_hw = window.spatial(shape[1], shape[2])
        rows = shape[0] * out_hw[0] * out_hw[1]
    g = _geometry(spec, plan, rows)
    out_shape = (*shape[:-1], spec.n) if window is None else (shape[0], *out_hw, spec.n)
    xs_shape = (rows,) if spec.per_row and not spec.fused_quant else ()
    x_dtype = "float32" if spec.fused_quant else spec.act_dtype
    if spec.fused_quant:
        pack_rows = _fused_rows(g, spec)
    elif window is not None:
        pack_rows = _window_rows(g, window, plan.isa, zp, (*shape[1:3], *out_hw))
    else:
        pack_rows = _plain_rows(g)
    xf_shape = (rows, spec.k) if window is None else (1, 1)
    return KernelParts(g, shape, out_shape, xs_shape, x_dtype, xf_shape, pack_rows)


def task_loop(parts: KernelParts, ep: Epilogue, gemm, work):
    """TIR macro: the body the dense and the block-sparse matmuls share. One task packs mr rows
    into words and runs `gemm` over a chunk of column tiles with `weights` (the kernel's weight
    buffers, a tuple); tasks run in parallel when `work` (multiply-adds) is worth it."""
    g, pack_rows, x_dtype = parts.g, parts.pack_rows, parts.x_dtype
    rows, n, mr, lanes, qv = g.rows, g.n, g.mr, g.lanes, FUSED_QUANT_LANES

    @T.macro
    def tasks(x, weights, corr, scale, fbias, xs, out):
        xf = T.decl_buffer(parts.xf_shape, x_dtype, data=x.data)
        of = T.decl_buffer((rows, n), ep.out_dtype, data=out.data)
        # With symbolic rows these three are let-bound (computed once, not inlined into every
        # index: LowerIntrin's floordiv expansion of the nested divisions never finished).
        row_tiles = g.row_tiles
        col_chunks = g.col_chunks
        chunk = g.chunk
        for task in _loop(work)(row_tiles * col_chunks):
            m0 = T.meta_var(task // col_chunks * mr)
            c0 = T.meta_var(task % col_chunks * chunk)
            words = T.decl_buffer((mr, g.kwords), "int32")
            acc = T.decl_buffer((mr * g.nr * gemm.ways,), f"int32x{lanes}", scope="local")
            tail = T.decl_buffer((lanes,), ep.out_dtype, scope="local")
            rs = T.decl_buffer((mr,), "float32", scope="local")
            vmax = T.decl_buffer((qv,), "float32", scope="local")
            pack_rows(x, xf, words, rs, vmax, m0)
            gemm.run(weights, words, acc, tail, of, corr, scale, fbias, xs, rs, m0, c0, chunk)

    return tasks


def matmul_kernel(
    spec: MatmulSpec,
    plan: MatmulPlan,
    shape: tuple[int, ...],
    zp: int,
    ep: Epilogue,
    window: ConvSpec | None = None,
) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w_panels, corr, scale, fbias, xs, out): pack rows into words, GEMM.

    Rows (activations, broadcast words) are the tile rows, output channels the tile columns
    (weight words in lanes). `shape` is x's full shape (batch dims flattened into rows);
    `xs` is the runtime activation scale (dynamic quantization; read only then): a scalar, or
    one per row when `spec.per_row`. One task packs mr rows into words (`_plain_rows`,
    `_fused_rows` or `_window_rows`) and computes a chunk of column tiles (`_gemm_tiles`).

    With `window` (a conv over NHWC x of `shape`), row m is output pixel m and its K values
    are the window's taps in (ky, kx, channel) order, each tap's channels padded to whole
    words: `window_words` says how rows are packed, `pack_window_weight` the weights. `zp` is
    what the window's padding reads (a plain matmul has none: its zero point is in `corr`).
    """
    parts = kernel_parts(spec, plan, shape, zp, window)
    g = parts.g
    tasks = task_loop(parts, ep, _gemm_tiles(g, plan.isa, spec, ep), _work(g.rows, g.k, g.n))
    return matmul_func(parts, plan, ep, tasks, sparse=False)


def matmul_func(parts: KernelParts, plan: MatmulPlan, ep: Epilogue, tasks, sparse: bool):
    """The PrimFunc of a dense (x, w_panels, ...) or block-sparse (x, values, indices,
    indptr, ...) int8 matmul running `tasks` (`task_loop`); the per-channel operands, xs and
    out are the same. One signature holds both weight forms; the unused ones are dropped."""
    g, shape, out_shape, xs_shape = parts.g, parts.shape, parts.out_shape, parts.xs_shape
    nnzb = tvm.tirx.Var("nnzb", "int32")  # sparse: any number of nonzero blocks

    @T.prim_func
    def matmul(
        x: T.Buffer(shape, parts.x_dtype),
        wq: T.Buffer((g.col_tiles, g.kwords, g.step), "int32"),
        values: T.Buffer((nnzb, g.lanes), "int32"),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((g.col_tiles + 1,), "int32"),
        corr: T.Buffer((plan.n_pad,), "int32"),
        scale: T.Buffer((plan.n_pad,), "float32"),
        fbias: T.Buffer((plan.n_pad,), "float32"),
        xs: T.Buffer(xs_shape, "float32"),
        out: T.Buffer(out_shape, ep.out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        if sparse:
            tasks(x, (values, indices, indptr), corr, scale, fbias, xs, out)
        else:
            tasks(x, (wq,), corr, scale, fbias, xs, out)

    unused = ("wq",) if sparse else ("values", "indices", "indptr")
    params = [p for p in matmul.params if p.name not in unused]
    return tvm.tirx.PrimFunc(params, matmul.body, matmul.ret_type, matmul.attrs)


def window_words(cin: int, isa: Isa) -> int:
    """Words per window tap: the tap's channels padded to a multiple of kpack."""
    return -(-cin // isa.kpack)


def window_matrix(w: np.ndarray, isa: Isa) -> np.ndarray:
    """OIHW int8 weights -> the [KH*KW*Cin_padded, Cout] matmul weight over windows."""
    cout, cin, kh, kw = w.shape
    cin_p = window_words(cin, isa) * isa.kpack
    taps = np.zeros((cout, kh, kw, cin_p), np.int8)
    taps[..., :cin] = w.transpose(0, 2, 3, 1)
    return taps.reshape(cout, -1).T


def pack_window_weight(w: np.ndarray, plan: MatmulPlan) -> np.ndarray:
    """OIHW int8 weights -> the panels of the [KH*KW*Cin_padded, Cout] matmul weight."""
    return pack_matmul_weight(window_matrix(w, plan.isa), plan)


def _window_words(conv: ConvSpec, isa: Isa, zp: int, sizes: tuple):
    """TIR: word kq of output pixel m's window over NHWC x (padding reads the zero point).
    `sizes`: h, w, oh, ow (ints, or expressions of x's size vars)."""
    kpack, off = isa.kpack, isa.offset(conv.act_dtype)
    h, w, oh, ow = sizes
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    pt, pl = conv.padding[0], conv.padding[1]
    wpt = window_words(conv.cin, isa)
    narrow = {4: "int8", 2: "int16", 1: "int32"}[kpack]
    narrow_np = {4: np.int8, 2: np.int16, 1: np.int32}[kpack]
    pad_word = T.int32(int(np.full(kpack, zp + off).astype(narrow_np).view(np.int32)[0]))

    def word(x, pixel, kq):
        tap, j = kq // wpt, kq % wpt
        b, oy, ox = pixel  # output pixel m's (m // (oh * ow), m // ow % oh, m % ow)
        y = oy * sh + tap // conv.kw * dh - pt
        xx = ox * sw + tap % conv.kw * dw - pl
        inside = tvm.tirx.all(0 <= y, y < h, 0 <= xx, xx < w)
        yc = T.max(T.min(y, h - 1), 0)
        xc = T.max(T.min(xx, w - 1), 0)
        if conv.cin % kpack == 0:  # a tap's word is kpack consecutive channels
            if kpack == 1:
                value = T.Cast("int32", x[b, yc, xc, j]) + off
            else:
                vals = T.Cast(f"int32x{kpack}", x[b, yc, xc, T.ramp(j * kpack, 1, kpack)])
                value = T.reinterpret(
                    "int32", T.Cast(f"{narrow}x{kpack}", vals + T.broadcast(off, kpack))
                )
        else:  # channels past cin read the zero point
            vals = []
            for i in range(kpack):
                c = j * kpack + i
                real = T.Cast("int32", x[b, yc, xc, T.min(c, conv.cin - 1)]) + off
                vals.append(T.if_then_else(c < conv.cin, real, T.int32(zp + off)))
            value = _word(vals, kpack)
        return T.if_then_else(inside, value, pad_word)

    return word


# --------------------------------------------------------------------------------------------
# add: int8 + int8 -> int8 (residual joins), the op's fixed-point math in vectors


def add_kernel(spec: AddSpec) -> tvm.tirx.PrimFunc:
    """PrimFunc(a, b, out): the int8 residual add, vectorized over the flattened tensor."""
    shape = tir_shape(spec.shape)  # a symbolic batch: a size var
    total = row_count((*shape, 1))
    lanes = 16
    per_task = 64  # vectors per parallel task
    ep = spec.ep

    def value(a, b, lanes_):
        return add_value(spec, a, b, lanes_)

    @T.prim_func
    def add(
        a: T.Buffer(shape, spec.a_dtype),
        b: T.Buffer(shape, spec.b_dtype),
        out: T.Buffer(shape, ep.out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        vecs = total // lanes  # let-bound when symbolic
        tasks = (vecs + per_task - 1) // per_task
        af = T.decl_buffer((total,), spec.a_dtype, data=a.data)
        bf = T.decl_buffer((total,), spec.b_dtype, data=b.data)
        of = T.decl_buffer((total,), ep.out_dtype, data=out.data)
        for task in _loop(16 * total)(tasks):
            for v in range(task * per_task, T.min(task * per_task + per_task, vecs)):
                of[T.ramp(v * lanes, 1, lanes)] = value(
                    af[T.ramp(v * lanes, 1, lanes)], bf[T.ramp(v * lanes, 1, lanes)], lanes
                )
        for i in range(vecs * lanes, total):
            of[i] = value(af[i], bf[i], 1)

    return add
