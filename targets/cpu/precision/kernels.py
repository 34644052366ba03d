"""The 16-bit-weight x fp32 matmul kernel every CPU runs: weights widened in registers, fp32
FMAs (the fallback for CPUs without a bf16 dot-product instruction).

Weights are read as column panels of PANEL = 16 output channels (two 8-lane fp32 vectors, or
one of 16):
wp [P, K', 16] uint16, K' = K rounded up to even (zero rows past K, zero channels past N), so a
k step reads 32 bytes, half of the fp32 weight's. bf16 widens with a zero-extend and a shift,
fp16 with a half-to-float conversion (`vcvtph2ps` on x86 with F16C, `fcvtl` on ARM).

Activations are rounded to the 16-bit format once per call into a scratch row [rows, K'] (the
op's r(x)). A parallel task is one panel and a chunk of up to CHUNK rows (`row_chunks.py`;
so a pointwise conv over a large map, many rows and one or two panels, still uses every core);
it runs register tiles of MR rows x 2 vectors of 8 lanes (AVX2, NEON) or 2 * MR rows x one
vector of 16 (AVX-512), k in the op's pair order (`graphopt.precision_ops`). Products of two
16-bit values are exact in fp32, so the result equals `reference_matmul` bit for bit.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.matmul_recipe import row_count, tir_shape
from graphopt.precision_epilogue import kernel_func, tir_epilogue
from graphopt.precision_ops import PrecisionMatmulSpec, tir_round, tir_store_value, tir_widen
from graphopt.targets.cpu.precision.row_chunks import row_chunks, target_threads

PANEL = 16
LANES = 8
MR = 4  # rows per register tile: 4 x 2 accumulators
CHUNK = 64  # rows per parallel task (with one panel): many-row layers use every core
LAYOUT = "cpu16"
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


def panels(n: int) -> int:
    return -(-n // PANEL)


def pack_panels(w_bits: np.ndarray, spec: PrecisionMatmulSpec) -> np.ndarray:
    """Natural bits [K, N] -> [P, K', 16] (zero padding past K and N)."""
    k, n, p = spec.k, spec.n, panels(spec.n)
    wp = np.zeros((spec.k_pairs * 2, p * PANEL), np.uint16)
    wp[:k, :n] = w_bits
    return np.ascontiguousarray(wp.reshape(-1, p, PANEL).transpose(1, 0, 2))


def store_macro(spec: PrecisionMatmulSpec, lanes: int = LANES, bits=None):
    """TIR macro: the epilogue of vector `v` to channels col .. col + lanes - 1 of row m
    (those below N); bias and residual as `graphopt.precision_epilogue.tir_epilogue` reads.
    `bits(value, lanes)`: how an `out_bits` spec's values become bit patterns (default: the
    portable rounding)."""
    n = spec.n

    def value(y, lanes_=1):
        return (
            bits(y, lanes_)
            if bits is not None and spec.out_bits
            else tir_store_value(y, spec, lanes_)
        )

    @T.macro
    def store(of, tail, m, col, v, bias, rf):
        if col + lanes <= n:
            y = T.meta_var(tir_epilogue(v, spec, bias, rf, m, col, lanes))
            of[m, T.ramp(col, 1, lanes)] = value(y, lanes)
        elif col < n:
            tail[T.ramp(0, 1, lanes)] = v
            for lane in range(n - col):
                y = T.meta_var(tir_epilogue(tail[lane], spec, bias, rf, m, col + lane))
                of[m, col + lane] = value(y)

    return store


def round_macro(spec: PrecisionMatmulSpec, loop=T.parallel):
    """TIR macro: r(x) into the scratch rows xr [rows, K'] (zero past K); `loop` over rows
    (serial for small inputs: a parallel launch costs more than the rounding). An `x_bits`
    spec's x is already rounded: its bit patterns are widened (exact). LANES values a vector
    expression: a rounding inside a `T.vectorized` loop stays scalar (its NaN test,
    docs/TVM_NOTES.md)."""
    k, kp, prec = spec.k, spec.k_pairs * 2, spec.precision
    vec = k // LANES * LANES

    def r(v, lanes=1):
        return tir_widen(v, prec, lanes) if spec.x_bits else tir_round(v, prec, lanes)

    @T.macro
    def round_rows(xf, xr, rows):
        for m in loop(rows):
            for v in range(vec // LANES):
                xr[m, T.ramp(v * LANES, 1, LANES)] = r(xf[m, T.ramp(v * LANES, 1, LANES)], LANES)
            for kk in range(vec, k):
                xr[m, kk] = r(xf[m, kk])
            for kk in range(k, kp):
                xr[m, kk] = T.float32(0)

    return round_rows


def _fma(a, b, c, lanes: int):
    return T.call_llvm_pure_intrin(f"float32x{lanes}", "llvm.fma", a, b, c)


def matmul16_kernel(spec: PrecisionMatmulSpec, lanes: int = LANES) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, wp [P, K', 16] uint16, [bias], [residual], out): one parallel task per
    panel and row chunk. `lanes`: fp32 lanes a vector, 8 (AVX2, NEON pairs) or 16 (AVX-512:
    a panel is one zmm, so a register tile is 8 rows x 1 vector instead of 4 x 2)."""
    x_shape = tir_shape(spec.x_shape)  # symbolic dims: size vars
    rows, n, prec = row_count(x_shape), spec.n, spec.precision
    kp, pairs, p_count = spec.k_pairs * 2, spec.k_pairs, panels(spec.n)
    per_row = PANEL // lanes  # vectors a row of a panel
    symbolic = not isinstance(rows, int)  # any row count: whole tiles and chunks, parallel
    mr = MR * 2 // per_row if symbolic else min(MR * 2 // per_row, rows)
    parallel = symbolic or rows * kp * n >= 1 << 18
    loop = T.parallel if parallel else T.serial
    chunks = row_chunks(rows, mr, CHUNK, p_count, target_threads() if parallel else 1)
    store = store_macro(spec, lanes)
    round_rows = round_macro(spec, T.parallel if symbolic or rows * kp >= 1 << 14 else T.serial)

    def widen(wp, p, kk, part):
        return tir_widen(wp[p, kk, T.ramp(part * lanes, 1, lanes)], prec, lanes)

    @T.macro
    def body(xf, wp, bias, rf, of):
        xr = T.decl_buffer((rows, kp), "float32")
        round_rows(xf, xr, rows)
        for task in loop(p_count * chunks.count):
            p = T.meta_var(task % p_count)
            acc = T.decl_buffer((per_row * mr,), f"float32x{lanes}", scope="local")
            tail = T.decl_buffer((lanes,), "float32", scope="local")
            for t in range(chunks.task_tiles(task // p_count)):
                row = T.meta_var(chunks.first_row(task // p_count, t))
                for i in T.unroll(per_row * mr):
                    acc[i] = T.broadcast(T.float32(0), lanes)
                for pr in range(pairs):
                    for h in T.unroll(2):
                        kk = T.meta_var(pr * 2 + 1 - h)
                        for v in T.unroll(per_row):
                            w = T.meta_var(widen(wp, p, kk, v))
                            for r in T.unroll(mr):
                                xv = T.meta_var(
                                    T.broadcast(xr[T.min(row + r, rows - 1), kk], lanes)
                                )
                                acc[per_row * r + v] = _fma(xv, w, acc[per_row * r + v], lanes)
                for r in T.unroll(mr):
                    if row + r < rows:
                        for v in T.unroll(per_row):
                            col = T.meta_var(p * PANEL + v * lanes)
                            store(of, tail, row + r, col, acc[per_row * r + v], bias, rf)

    return kernel_func(body, spec, x_shape, (p_count, kp, PANEL), "uint16", _ATTRS)
