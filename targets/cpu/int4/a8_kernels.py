"""The W4A8 matmul kernels: int4 weights x int8 activations quantized per row at run time.

The arithmetic is the op's (`graphopt.int4_a8_ops`): int32 dot products of the activation
codes with the unsigned nibbles per group, the zero point subtracted through the activations'
group sums, then f32(acc) * scale fused into an fp32 sum over groups and one multiply by the
row's scale. The inner step is the int8 flow's dot instruction of the target's scheme
(`targets/cpu/int8/kernels.py`), on operands made from the nibbles in registers:

    isa      lanes  k/word  weight word from the packed nibbles          instruction
    avx2     8      4       u16 v: (v & 0x0F0F) | (v << 12 & 0x0F0F0000)  vpmaddubsw (u8 nibbles
                                                                          x s8 -> int16 pairs),
                                                                          vpmaddwd widens a run
    vnni     16     4       as avx2                                        vpdpbusd (u8 x s8)
    sdot     4      4       as avx2                                        sdot (s8 x s8, ARM)
    generic  4      2       byte b: (b | b << 12) & 0x000F000F (s16 x2)    int16-pair multiply-add

A panel is 2 vectors of output channels (PL = 2 x lanes). wp[p, kq, c] holds word kq of
channel PL p + c: one byte (two k) or one uint16 (four k, stored k0 k2 k1 k3 so that the
decode above puts them in byte order). The kernel first quantizes x's rows into words
(`a8_rows.py`), keeping each row's scale and per-group sums; then one task per (panel, chunk
of row tiles): a single row tile decodes each weight load straight into the dot; more rows
decode the task's panel once (into q - z words where the operand may be signed: sdot,
generic) and run mr x nv register tiles over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.int4_a8_ops import codes
from graphopt.int4_ops import Int4MatmulSpec
from graphopt.matmul_recipe import row_count, tir_shape
from graphopt.targets.cpu.int4.a8_rows import quantize_rows_macro
from graphopt.targets.cpu.int8 import kernels as K8

KPACK = {"vnni": 4, "avx2": 4, "sdot": 4, "generic": 2}
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


@dataclass(frozen=True)
class A8Plan:
    isa: K8.Isa
    kpack: int
    lanes: int
    mr: int  # rows per register tile
    nv: int = 2  # vectors of output channels per panel (a register tile's columns)

    @property
    def pl(self) -> int:
        return self.nv * self.lanes

    @property
    def layout(self) -> str:
        return f"a8-{self.isa.name}"


def plan_for(spec: Int4MatmulSpec, isa: K8.Isa) -> A8Plan:
    kpack = KPACK[isa.name]
    if spec.group % kpack:
        raise ValueError(f"W4A8 on {isa.name} needs groups of a multiple of {kpack} weights")
    tile = isa.accumulators // 4  # rows of a register tile: all of them for symbolic rows
    return A8Plan(isa, kpack, isa.lanes, tile if spec.symbolic else max(1, min(tile, spec.rows)))


def pack_a8(packed, scales, zeros, spec: Int4MatmulSpec, plan: A8Plan) -> list[np.ndarray]:
    """Natural constants -> wp [P, KW, PL] (uint8 or uint16 words), scales [P, G, PL], zero
    points [P, G, PL] uint8 (symmetric: the [1] as it was). Padding nibbles are 0 (their
    activations are 0) and padded channels get scale 0."""
    pl, kp = plan.pl, plan.kpack
    p, kw, g = -(-spec.n // pl), -(-spec.k // kp), spec.groups
    q = np.zeros((p * pl, kw * kp), np.uint32)
    q[: spec.n, : spec.k] = codes(spec, packed)
    q = q.reshape(p * pl, kw, kp)
    if kp == 2:
        words = (q[..., 0] | q[..., 1] << 4).astype(np.uint8)
    else:
        words = (q[..., 0] | q[..., 2] << 4 | q[..., 1] << 8 | q[..., 3] << 12).astype(np.uint16)
    wp = words.reshape(p, pl, kw).transpose(0, 2, 1)

    def panels(a, dtype):
        out = np.zeros((p * pl, g), dtype)
        out[: spec.n] = a
        return np.ascontiguousarray(out.reshape(p, pl, g).transpose(0, 2, 1))

    zp = zeros if spec.symmetric else panels(zeros, np.uint8)
    return [np.ascontiguousarray(wp), panels(scales, scales.dtype), zp]


def _decode(plan: A8Plan):
    """TIR: int32xL weight words (dot operands) of vector u of panel p at word kq."""
    n = plan.lanes

    def c(v):
        return T.broadcast(T.int32(v), n)

    def decode(wp, p, kq, u):
        v = T.Cast(f"int32x{n}", wp[p, kq, T.ramp(u * n, 1, n)])
        if plan.kpack == 2:
            return (v | (v << c(12))) & c(0x000F000F)
        return (v & c(0x0F0F)) | ((v << c(12)) & c(0x0F0F0000))

    return decode


def _decode_signed(plan: A8Plan, spec: Int4MatmulSpec):
    """TIR: the words of q - z (signed narrow fields) of vector u of panel p at word kq in
    group g: what a panel decoded once for many rows holds, so no zero-point term is left."""
    n, kp = plan.lanes, plan.kpack

    def c(v):
        return T.broadcast(T.int32(v), n)

    def decode(wp, zp, p, kq, u, g):
        v = T.Cast(f"int32x{n}", wp[p, kq, T.ramp(u * n, 1, n)])
        if spec.symmetric:
            z = c(8)
        else:
            z = T.Cast(f"int32x{n}", zp[p, g, T.ramp(u * n, 1, n)])
        if kp == 2:
            lo, hi = (v & c(15)) - z, T.shift_right(v, c(4)) - z
            return (lo & c(0xFFFF)) | (hi << c(16))
        fields = [(T.shift_right(v, c(s)) & c(15)) - z for s in (0, 8, 4, 12)]  # k0 k1 k2 k3
        word = fields[0] & c(255)
        for j in (1, 2):
            word = word | ((fields[j] & c(255)) << c(8 * j))
        return word | (fields[3] << c(24))

    return decode


def _dot(plan: A8Plan):
    """TIR: acc + the word dot products; `act` broadcast activation words, `wt` weights."""
    isa, n = plan.isa, plan.lanes

    def c(v):
        return T.broadcast(T.int32(v), n)

    def dot(acc, act, wt):
        if isa.name == "vnni":  # vpdpbusd: the unsigned operand first (the nibbles)
            return isa.dot(acc, wt, act)
        if isa.name == "avx2":  # vpmaddubsw: u8 nibbles x s8 codes, pairs summed into int16
            return acc + T.call_llvm_pure_intrin(
                f"int16x{2 * n}",
                "llvm.x86.avx2.pmadd.ub.sw",
                T.reinterpret(f"int8x{4 * n}", wt),
                T.reinterpret(f"int8x{4 * n}", act),
            )
        if isa.name == "generic":  # two int16 halves per word

            def lo(v):
                return T.shift_right(v << c(16), c(16))

            return acc + lo(act) * lo(wt) + T.shift_right(act, c(16)) * T.shift_right(wt, c(16))
        return isa.dot(acc, act, wt)

    return dot


# avx2: words of 4 k summed by vpmaddubsw into int16 pairs; |pair| <= 2 * 15 * 128 = 3840,
# so 8 words (one group of 32) add up in int16 (<= 30720) before vpmaddwd widens them.
AVX2_RUN = 8


def narrow_acc(plan: A8Plan) -> tuple[str, int, int]:
    """(dtype, lanes, words per run) of the accumulators a run of words is summed in."""
    if plan.isa.name == "avx2":
        return "int16", 2 * plan.lanes, AVX2_RUN
    return "int32", plan.lanes, 1 << 30


def _widen(plan: A8Plan):
    """TIR: a run's narrow accumulator as int32 lanes (avx2: vpmaddwd with ones)."""
    n = plan.lanes

    def widen(t):
        if plan.isa.name != "avx2":
            return t
        ones = T.broadcast(T.int16(1), 2 * n)
        return T.call_llvm_pure_intrin(f"int32x{n}", "llvm.x86.avx2.pmadd.wd", t, ones)

    return widen


@dataclass(frozen=True)
class _Shape:
    x_shape: tuple  # x's shape for the buffers (symbolic dims: size vars)
    rows: int | tvm.tirx.PrimExpr  # an expression of x's size vars when they are symbolic
    k: int
    n: int
    kw: int  # words per row
    gw: int  # words per group
    panels: int
    row_tiles: int | tvm.tirx.PrimExpr
    chunks: int | tvm.tirx.PrimExpr  # row-tile chunks per panel (tasks: panels x chunks)
    per_chunk: int | tvm.tirx.PrimExpr


def _ceil_div(a, b):
    return (a + b - 1) // b


def _shape(spec: Int4MatmulSpec, plan: A8Plan) -> _Shape:
    x_shape = tir_shape(spec.x_shape)
    rows = row_count(x_shape)
    panels = -(-spec.n // plan.pl)
    row_tiles = _ceil_div(rows, plan.mr)
    want = -(-K8.MIN_TASKS // panels)  # chunks that make enough tasks
    chunks = min(row_tiles, want) if isinstance(rows, int) else tvm.tirx.min(row_tiles, want)
    per_chunk = _ceil_div(row_tiles, chunks)
    kw = -(-spec.k // plan.kpack)
    return _Shape(
        x_shape, rows, spec.k, spec.n, kw, spec.group // plan.kpack, panels, row_tiles,
        _ceil_div(row_tiles, per_chunk), per_chunk,
    )  # fmt: skip


def one_tile(sh: _Shape) -> bool | tvm.tirx.PrimExpr:
    """Whether the rows fit one register tile (batch-1 GEMV): a condition of the kernel's when
    the rows are symbolic."""
    return sh.row_tiles == 1


def signed_panel(plan: A8Plan) -> bool:
    """Whether a task that decodes its panel once (several row tiles) decodes it into q - z
    words (not on vnni and avx2, whose unsigned operand must be the nibbles)."""
    return plan.isa.name not in ("vnni", "avx2")


def _fma(a, b, c, lanes: int):
    return T.call_llvm_pure_intrin(f"float32x{lanes}", "llvm.fma", a, b, c)


def _tile(spec: Int4MatmulSpec, plan: A8Plan, sh: _Shape, inline: bool):
    """TIR macro: the mr x 2-vector register tile of rows m0 .. m0 + mr - 1 and panel p: per
    group the int32 dot products, the zero-point term, f32 x scale into fp32 accumulators;
    then the row scales and the stores (valid rows and channels only). inline: the weights
    are decoded at each load (one row tile), else read from the task's decoded panel."""
    mr, nl, rows, n, nv = plan.mr, plan.lanes, sh.rows, sh.n, plan.nv
    dot, decode = _dot(plan), _decode(plan)
    nt, nn, run = narrow_acc(plan)
    runs = -(-sh.gw // run)
    widen = _widen(plan)

    def zvec(zp, p, g, u):
        if not inline and signed_panel(plan):  # the decoded panel holds q - z
            return T.broadcast(T.int32(0), nl)
        if spec.symmetric:
            return T.broadcast(T.int32(8), nl)
        return T.Cast(f"int32x{nl}", zp[p, g, T.ramp(u * nl, 1, nl)])

    def weight(wp, wd, p, kq, u):
        return decode(wp, p, kq, u) if inline else wd[kq, T.ramp(u * nl, 1, nl)]

    def scale(sp, p, g, u):
        return T.Cast(f"float32x{nl}", sp[p, g, T.ramp(u * nl, 1, nl)])

    @T.macro
    def store(of, tail, m, col, v):
        if col + nl <= n:
            of[m, T.ramp(col, 1, nl)] = v
        elif col < n:
            tail[T.ramp(0, 1, nl)] = v
            for lane in range(n - col):
                of[m, col + lane] = tail[lane]

    @T.macro
    def tile(wp, wd, sp, zp, words, asum, xs, iacc, tacc, facc, tail, of, p, m0):
        for i in T.unroll(nv * mr):
            facc[i] = T.broadcast(T.float32(0), nl)
        for g in range(spec.groups):
            for i in T.unroll(nv * mr):
                iacc[i] = T.broadcast(T.int32(0), nl)
            for rb in range(runs):  # runs of words summed in the narrow type, then widened
                for i in T.unroll(nv * mr):
                    tacc[i] = T.broadcast(T.Cast(nt, 0), nn)
                for kq in range(
                    g * sh.gw + rb * run,
                    T.min(T.min(sh.kw, g * sh.gw + sh.gw), g * sh.gw + rb * run + run),
                ):
                    for r in T.unroll(mr):
                        for u in T.unroll(nv):
                            tacc[nv * r + u] = dot(
                                tacc[nv * r + u],
                                T.broadcast(words[T.min(m0 + r, rows - 1), kq], nl),
                                weight(wp, wd, p, kq, u),
                            )
                for i in T.unroll(nv * mr):
                    iacc[i] = iacc[i] + widen(tacc[i])
            for r in T.unroll(mr):
                for u in T.unroll(nv):
                    zs = T.meta_var(T.broadcast(asum[T.min(m0 + r, rows - 1), g], nl))
                    exact = T.meta_var(iacc[nv * r + u] - zvec(zp, p, g, u) * zs)
                    facc[nv * r + u] = _fma(
                        T.Cast(f"float32x{nl}", exact), scale(sp, p, g, u), facc[nv * r + u], nl
                    )
        for r in T.unroll(mr):
            if m0 + r < rows:
                for u in T.unroll(nv):
                    store(
                        of,
                        tail,
                        m0 + r,
                        p * plan.pl + u * nl,
                        facc[nv * r + u] * T.broadcast(xs[m0 + r], nl),
                    )

    return tile


def _task_macro(spec: Int4MatmulSpec, plan: A8Plan, sh: _Shape, inline: bool):
    """TIR macro: the row tiles t0 .. t1 - 1 of one task on panel p, decoding the panel once
    into `wd` first unless `inline`."""
    tile = _tile(spec, plan, sh, inline)
    decode, decode_signed = _decode(plan), _decode_signed(plan, spec)
    signed, gw, nl, nv, mr = signed_panel(plan), sh.gw, plan.lanes, plan.nv, plan.mr

    @T.macro
    def task(wp, wd, sp, zp, words, asum, xs, iacc, tacc, facc, tail, of, p, t0, t1):
        if not inline:
            for kq in range(sh.kw):
                for u in T.unroll(nv):
                    if signed:
                        wd[kq, T.ramp(u * nl, 1, nl)] = decode_signed(wp, zp, p, kq, u, kq // gw)
                    else:
                        wd[kq, T.ramp(u * nl, 1, nl)] = decode(wp, p, kq, u)
        for t in range(t0, t1):
            tile(wp, wd, sp, zp, words, asum, xs, iacc, tacc, facc, tail, of, p, t * mr)

    return task


def int4_a8_matmul_kernel(spec: Int4MatmulSpec, plan: A8Plan) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, wp, sp, zp, out) of `pack_a8`'s constants (module docstring). With
    symbolic rows, whether the weights are decoded at each load (one row tile) is decided at
    run time."""
    sh = _shape(spec, plan)
    rows, k, n, nl, pl = sh.rows, sh.k, sh.n, plan.lanes, plan.pl
    wdtype = "uint8" if plan.kpack == 2 else "uint16"
    z_shape = (1,) if spec.symmetric else (sh.panels, spec.groups, pl)
    quantize = quantize_rows_macro(spec, plan.kpack)
    inline = one_tile(sh)
    task_inline = _task_macro(spec, plan, sh, inline=True)
    task_decoded = _task_macro(spec, plan, sh, inline=False)
    loop_rows = K8._loop(16 * rows * k)
    loop_tasks = K8._loop(rows * k * n)
    mr, nv = plan.mr, plan.nv
    nt, nn, _run = narrow_acc(plan)
    wd_rows = 1 if inline is True else sh.kw  # the decoded panel (unused when inline)

    @T.prim_func
    def int4_a8_matmul(
        x: T.Buffer(sh.x_shape, "float32"),
        wp: T.Buffer((sh.panels, sh.kw, pl), wdtype),
        sp: T.Buffer((sh.panels, spec.groups, pl), spec.scale_dtype),
        zp: T.Buffer(z_shape, "uint8"),
        out: T.Buffer((*sh.x_shape[:-1], n), "float32"),
    ):
        T.func_attr(_ATTRS)
        xf = T.decl_buffer((rows, k), "float32", data=x.data)
        of = T.decl_buffer((rows, n), "float32", data=out.data)
        words = T.decl_buffer((rows, sh.kw), "int32")
        asum = T.decl_buffer((rows, spec.groups), "int32")
        xs = T.decl_buffer((rows,), "float32")
        for m in loop_rows(rows):
            quantize(xf, xs, words, asum, m)
        # With symbolic rows these three are let-bound: computed once, not expanded into
        # every index (LowerIntrin's floordiv expansion of them took over a minute a kernel)
        row_tiles = sh.row_tiles
        chunks = sh.chunks
        per_chunk = sh.per_chunk
        for task in loop_tasks(sh.panels * chunks):
            iacc = T.decl_buffer((nv * mr,), f"int32x{nl}", scope="local")
            tacc = T.decl_buffer((nv * mr,), f"{nt}x{nn}", scope="local")
            facc = T.decl_buffer((nv * mr,), f"float32x{nl}", scope="local")
            tail = T.decl_buffer((nl,), "float32", scope="local")
            wd = T.decl_buffer((wd_rows, pl), "int32")
            p = T.meta_var(task // chunks)
            t0 = T.meta_var(task % chunks * per_chunk)
            t1 = T.meta_var(T.min(t0 + per_chunk, row_tiles))
            scratch = T.meta_var((words, asum, xs, iacc, tacc, facc, tail))
            if inline:
                task_inline(wp, wd, sp, zp, *scratch, of, p, t0, t1)
            else:
                task_decoded(wp, wd, sp, zp, *scratch, of, p, t0, t1)

    return int4_a8_matmul
