"""The pair kernel of the 16-bit matmul: register tiles over words of a k pair, one call of an
instruction that multiplies 16-bit values into fp32 sums per pair (`PairInstruction`). On x86
CPUs with AVX512_BF16 that is `vdpbf16ps` (two bf16 products per fp32 lane per instruction, 32
products per zmm) on pair-interleaved weights, described here; ARM's widening multiply-adds
(FMLAL, BFMLALB/T) run the same tiles (`neon_long.py`).

TVM 0.27 legalizes every bfloat16 value away before code generation, so the kernel never holds
one: weights and rounded activations are int32 words of two bf16 bit patterns (k even in the
low half, k odd in the high half), and the instruction is reached through a small LLVM IR
function imported into the kernel (`pragma_import_llvm`, inlined by LLVM) that reinterprets
two `<16 x i32>` as `<32 x bfloat>` and calls `llvm.x86.avx512bf16.dpbf16ps.512`.

Weights: wp [P, K'/2, 16] int32, P = panels of 16 output channels, padded to a whole number of
register tiles' worth (zero words past K and N). Activations are rounded to bf16 once per call
into a scratch [rows, K'/2] of words (the op's r(x), software round to nearest even, as
`precision_ops.to_bits`). A parallel task is NR panels and a chunk of rows, run as MR x NR
register tiles (MR * NR zmm accumulators). An input already stored as bf16 bit patterns
(`x_bits`, from `precision-handoff`) with an even K is read as those words in place: no pass.

The instruction adds, per lane and per k pair, the odd product then the even one, each step
rounded to fp32 (the op's pair order), with denormal inputs read as zero and denormal results
flushed; `reference_dpbf16` is its numpy model. On normal numbers that equals
`precision_ops.reference_matmul`, the fallback kernel's model, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.matmul_recipe import row_count, tir_shape
from graphopt.precision_epilogue import kernel_func
from graphopt.precision_ops import (
    PrecisionMatmulSpec,
    bf16_bits_to_f32,
    pair_order,
    tir_bits,
    x_rounded,
)
from graphopt.targets.cpu.precision.cvt_bf16 import CVT_IR, bf16_bits
from graphopt.targets.cpu.precision.kernels import store_macro
from graphopt.targets.cpu.precision.row_chunks import row_chunks, target_threads

PANEL = 16
LAYOUT = "dpbf16"
CHUNK_ROWS = 48  # rows per parallel task (a multiple of every MR below)
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}
_DP = "graphopt_dpbf16ps"
_DP_IR = f"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(
  <16 x float>, <32 x bfloat>, <32 x bfloat>)
define <16 x float> @{_DP}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) {{
  %av = bitcast <16 x i32> %a to <32 x bfloat>
  %bv = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(
    <16 x float> %acc, <32 x bfloat> %av, <32 x bfloat> %bv)
  ret <16 x float> %r
}}
"""


@dataclass(frozen=True)
class PairInstruction:
    """What one call of a pair kernel's instruction does: 16 fp32 sums (16 output channels)
    += x's k pair (one broadcast word) times 16 words of weights, the odd k's product added
    first, then the even k's, each step rounded to fp32. `function` is an LLVM IR function
    (`ir`, imported into the kernel) taking (acc <16 x float>, x <16 x i32>, w <16 x i32>).

    `tile_rows`: rows of a register tile by its panel count (up to `row_panels` panels where
    there is more than one row); `split`: a pair's 16 weight words hold the 16 channels' even
    k then their odd k (16-bit each) instead of one (even, odd) word per channel; `cvt`:
    outputs stored as bf16 bits use `vcvtneps2bf16`."""

    name: str
    precision: str
    function: str
    ir: str
    tile_rows: tuple[tuple[int, int], ...]
    row_panels: int
    split: bool = False
    cvt: bool = False


DPBF16 = PairInstruction(
    "dpbf16", "bf16", _DP, _DP_IR, ((4, 6), (3, 8), (2, 8), (1, 8)), row_panels=4, cvt=True
)


@dataclass(frozen=True)
class Tile:
    """A register tile: MR rows x NR panels of 16 channels (MR * NR accumulators)."""

    mr: int
    nr: int


def tile_for(spec: PrecisionMatmulSpec, instr: PairInstruction = DPBF16) -> Tile:
    """The register tile of a layer: as many panels per tile as wastes no padding (up to 4,
    or the instruction's `row_panels` for more than one row), and the instruction's rows for
    that many panels; one row for a GEMV."""
    p = -(-spec.n // PANEL)
    static = all(isinstance(d, int) for d in spec.x_shape[:-1])
    most = 4 if static and spec.rows == 1 else instr.row_panels
    nr = next(c for c in (4, 3, 2, 1) if c <= most and p % c == 0 and (c == 1 or p >= c))
    if p >= 4 and nr == 1 and most >= 2:
        nr = 2  # an odd panel count: one zero panel beats single-panel tiles
    mr = dict(instr.tile_rows)[nr]
    if static:
        mr = min(mr, spec.rows)
    return Tile(mr, nr)


def padded_panels(spec: PrecisionMatmulSpec, tile: Tile) -> int:
    p = -(-spec.n // PANEL)
    return -(-p // tile.nr) * tile.nr


def pack_pairs(
    w_bits: np.ndarray, spec: PrecisionMatmulSpec, instr: PairInstruction = DPBF16
) -> np.ndarray:
    """Natural 16-bit patterns [K, N] -> [P, K'/2, 16] int32 words: per channel (k even low,
    k odd high), or for a `split` instruction 16 channels' k even then their k odd."""
    p = padded_panels(spec, tile_for(spec, instr))
    wp = np.zeros((spec.k_pairs * 2, p * PANEL), np.uint16)
    wp[: spec.k, : spec.n] = w_bits
    pairs = wp.reshape(spec.k_pairs, 2, p, PANEL)
    order = (2, 0, 1, 3) if instr.split else (2, 0, 3, 1)  # [P, K'/2, 2, 16] / [P, K'/2, 16, 2]
    words = np.ascontiguousarray(pairs.transpose(order)).reshape(p, spec.k_pairs, PANEL, 2)
    return words.view(np.int32)[..., 0]


def reference_dpbf16(x, w_bits, spec: PrecisionMatmulSpec) -> np.ndarray:
    """numpy model of the kernel (the instruction's arithmetic): per lane, per k pair, the
    odd product then the even one added to the fp32 sum, each step rounded; bf16 denormal
    inputs read as zero, denormal sums flushed to zero."""

    def daz(v):
        return np.where(np.abs(v) < np.float32(2.0**-126), np.float32(0), v).astype(np.float32)

    xr = daz(x_rounded(x, spec).reshape(spec.rows, spec.k))
    w = daz(bf16_bits_to_f32(w_bits))
    acc = np.zeros((spec.rows, spec.n), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for kk in pair_order(spec.k):
            acc = daz(acc + xr[:, kk : kk + 1] * w[kk])
    return acc.reshape(spec.out_shape)


def _bf16_word(v):
    """TIR: fp32 -> its bf16 bit pattern in the low 16 bits of a uint32 (round to nearest
    even; NaN quieted with its sign), as `precision_ops.f32_to_bf16_bits` (the attention
    kernel's scalar roundings)."""
    u = T.reinterpret("uint32", v)
    odd = T.bitwise_and(T.shift_right(u, T.uint32(16)), T.uint32(1))
    rounded = T.shift_right(u + T.uint32(0x7FFF) + odd, T.uint32(16))
    quiet = T.bitwise_or(T.shift_right(u, T.uint32(16)), T.uint32(0x40))
    return T.Select(T.isnan(v), quiet, rounded)  # one unordered compare


def _dp(acc, a, b):
    """`vdpbf16ps` on 16 fp32 sums (the attention kernel's calls)."""
    return T.call_pure_extern("float32x16", _DP, acc, a, b)


def round_pairs_macro(k: int, pairs: int, loop, x_bits: bool = False, precision: str = "bf16"):
    """TIR macro: x [rows, K] fp32 -> words [rows, K'/2] of two rounded 16-bit values (zero
    past K; `x_bits`: x holds the bit patterns already). The words are written as their
    16-bit halves (k even is the low half), 32 values a vector expression: a rounding inside
    a `T.vectorized` loop stays scalar (its NaN test, docs/TVM_NOTES.md)."""
    step = 2 * PANEL
    vec = k // step * step

    def half(v, lanes=1):
        return v if x_bits else tir_bits(v, precision, lanes)

    @T.macro
    def round_pairs(xf, xw, rows):
        xh = T.decl_buffer((rows, pairs * 2), "uint16", data=xw.data)
        for m in loop(rows):
            for v in range(vec // step):
                xh[m, T.ramp(v * step, 1, step)] = half(xf[m, T.ramp(v * step, 1, step)], step)
            for kk in range(vec, k):
                xh[m, kk] = half(xf[m, kk])
            for kk in range(k, pairs * 2):  # odd K: the last word's high half is zero
                xh[m, kk] = T.uint16(0)

    return round_pairs


def dpbf16_kernel(spec: PrecisionMatmulSpec) -> tvm.tirx.PrimFunc:
    """The `vdpbf16ps` kernel (x86 AVX512_BF16)."""
    return pair_kernel(spec, DPBF16)


def pair_kernel(spec: PrecisionMatmulSpec, instr: PairInstruction) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, wp [P, K'/2, 16] int32, [bias], [residual], out): one parallel task per
    NR panels and row chunk, `instr` for each k pair of each register tile."""
    x_shape = tir_shape(spec.x_shape)
    rows, n, pairs = row_count(x_shape), spec.n, spec.k_pairs
    tile = tile_for(spec, instr)
    mr, nr = tile.mr, tile.nr
    p_count = padded_panels(spec, tile)
    groups = p_count // nr
    symbolic = not isinstance(rows, int)
    parallel = symbolic or rows * pairs * n >= 1 << 17
    loop = T.parallel if parallel else T.serial
    chunks = row_chunks(rows, mr, CHUNK_ROWS, groups, target_threads() if parallel else 1)
    big = symbolic or rows * pairs >= 1 << 13
    round_pairs = round_pairs_macro(
        spec.k, pairs, T.parallel if big else T.serial, spec.x_bits, spec.precision
    )
    store = store_macro(spec, PANEL, bf16_bits if instr.cvt else None)  # vcvtneps2bf16

    def step(acc, x, w):
        return T.call_pure_extern("float32x16", instr.function, acc, x, w)

    @T.macro
    def tiles(xw, wp, bias, rf, of):
        for task in loop(groups * chunks.count):
            g = T.meta_var(task % groups)
            acc = T.decl_buffer((mr * nr,), "float32x16", scope="local")
            tail = T.decl_buffer((PANEL,), "float32", scope="local")
            for t in range(chunks.task_tiles(task // groups)):
                row = T.meta_var(chunks.first_row(task // groups, t))
                for i in T.unroll(mr * nr):
                    acc[i] = T.broadcast(T.float32(0), PANEL)
                for pr in range(pairs):
                    for r in T.unroll(mr):
                        xv = T.meta_var(T.broadcast(xw[T.min(row + r, rows - 1), pr], PANEL))
                        for j in T.unroll(nr):
                            w = T.meta_var(wp[g * nr + j, pr, T.ramp(0, 1, PANEL)])
                            acc[r * nr + j] = step(acc[r * nr + j], xv, w)
                for r in T.unroll(mr):
                    if row + r < rows:
                        for j in T.unroll(nr):
                            col = T.meta_var((g * nr + j) * PANEL)
                            store(of, tail, row + r, col, acc[r * nr + j], bias, rf)

    @T.macro
    def rounded(xf, wp, bias, rf, of):
        xw = T.decl_buffer((rows, pairs), "int32")
        round_pairs(xf, xw, rows)
        tiles(xw, wp, bias, rf, of)

    @T.macro
    def as_words(xf, wp, bias, rf, of):  # even K of bit patterns: x's rows are the words
        xw = T.decl_buffer((rows, pairs), "int32", data=xf.data)
        tiles(xw, wp, bias, rf, of)

    body = as_words if spec.x_bits and spec.k % 2 == 0 else rounded

    ir = instr.ir + (CVT_IR if instr.cvt and spec.out_bits else "")

    @T.macro
    def with_instruction(xf, wp, bias, rf, of):
        with T.attr(0, "pragma_import_llvm", ir):
            body(xf, wp, bias, rf, of)

    return kernel_func(with_instruction, spec, x_shape, (p_count, pairs, PANEL), "int32", _ATTRS)
