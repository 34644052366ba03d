"""The W4 x fp32 matmul kernel: packed nibbles unpacked in registers, fp32 FMAs.

Weights are read as column panels of PANEL = 16 output channels (two 8-lane fp32 vectors).
Byte j of panel p at reduction index k holds channel p*16 + j in its low nibble and p*16 + 8 +
j in its high nibble, so one 8-byte load gives both vectors of a k with an `and` and a shift;
scales (and zero points) are per panel, group and channel ([P, G, 16]). A weight is
(f32(q) - f32(z)) * s, exact as the op defines it, and products are accumulated with fused
multiply-adds in k order (`graphopt.int4_ops.reference_matmul(fma=True)`).

One parallel task is one panel. For a single row (batch-1 GEMV, where the weights' bytes are
the cost) each 8-byte load is decoded straight into the two FMAs. For more rows the task
dequantizes its panel once into an fp32 buffer [K, 16] (L2) and runs MR x 2 register tiles of
rows over it, so decoding is paid once per weight, not once per row. With a symbolic row count
(a sequence range, a symbolic batch) the kernel makes that choice at run time.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.int4_ops import Int4MatmulSpec
from graphopt.matmul_recipe import row_count, tir_shape

PANEL = 16
LANES = 8
HALF = PANEL // 2  # bytes per panel row
MR = 4  # rows per register tile: 4 x 2 accumulators
LAYOUT = "cpu16"
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


def panels(n: int) -> int:
    return -(-n // PANEL)


def pack_panels(packed: np.ndarray, scales: np.ndarray, zeros, spec: Int4MatmulSpec):
    """Natural constants -> (wp uint8 [P, K, 8], sp [P, G, 16] in the scales' dtype, zp uint8
    [P, G, 16] or the symmetric [1] as it was). Channels past N get scale 0 (dropped)."""
    k, n, p = spec.k, spec.n, panels(spec.n)
    q = np.zeros((p * PANEL, packed.shape[1] * 2), np.uint8)
    q[:n, 0::2] = packed & 15
    q[:n, 1::2] = packed >> 4
    q = q[:, :k].reshape(p, 2, HALF, k)  # [P, lo/hi, 8, K]
    wp = (q[:, 0] | (q[:, 1] << 4)).transpose(0, 2, 1)  # [P, K, 8]
    sp = np.zeros((p * PANEL, spec.groups), scales.dtype)
    sp[:n] = scales
    sp = sp.reshape(p, PANEL, -1).transpose(0, 2, 1)
    if spec.symmetric:
        return [np.ascontiguousarray(wp), np.ascontiguousarray(sp), zeros]
    zp = np.zeros((p * PANEL, spec.groups), np.uint8)
    zp[:n] = zeros
    zp = zp.reshape(p, PANEL, -1).transpose(0, 2, 1)
    return [np.ascontiguousarray(a) for a in (wp, sp, zp)]


def _decoders(spec: Int4MatmulSpec):
    """(TIR macro: group g's scales and zero points of panel p into `sz` as fp32 vectors
    [s0, s1, z0, z1], once a group; TIR: the two weight vectors of index kk from `sz`)."""

    def zero(zp, p, g, half):
        if spec.symmetric:
            return T.broadcast(T.float32(8.0), LANES)
        return T.Cast(f"float32x{LANES}", zp[p, g, T.ramp(half * LANES, 1, LANES)])

    @T.macro
    def load_group(sz, sp, zp, p, g):
        sz[0] = T.Cast(f"float32x{LANES}", sp[p, g, T.ramp(0, 1, LANES)])
        sz[1] = T.Cast(f"float32x{LANES}", sp[p, g, T.ramp(LANES, 1, LANES)])
        sz[2] = zero(zp, p, g, 0)
        sz[3] = zero(zp, p, g, 1)

    def weights(wp, sz, p, kk):
        b = T.Cast(f"int32x{LANES}", wp[p, kk, T.ramp(0, 1, LANES)])
        lo = T.Cast(f"float32x{LANES}", b & T.broadcast(15, LANES))
        hi = T.Cast(f"float32x{LANES}", T.shift_right(b, T.broadcast(4, LANES)))
        return (lo - sz[2]) * sz[0], (hi - sz[3]) * sz[1]

    return load_group, weights


def _store_macro(n: int):
    """TIR macro: vector `v` to channels col .. col + 7 of row m (only those below n)."""

    @T.macro
    def store(of, tail, m, col, v):
        if col + LANES <= n:
            of[m, T.ramp(col, 1, LANES)] = v
        elif col < n:
            tail[T.ramp(0, 1, LANES)] = v
            for lane in range(n - col):
                of[m, col + lane] = tail[lane]

    return store


def _fma(a, b, c):
    return T.call_llvm_pure_intrin(f"float32x{LANES}", "llvm.fma", a, b, c)


def int4_matmul_kernel(spec: Int4MatmulSpec) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, wp [P, K, 8], sp [P, G, 16], zp, out): one task per column panel."""
    x_shape = tir_shape(spec.x_shape)  # symbolic dims: size vars
    rows, k, n, p_count = row_count(x_shape), spec.k, spec.n, panels(spec.n)
    z_shape = (1,) if spec.symmetric else (p_count, spec.groups, PANEL)
    (load_group, weights), store = _decoders(spec), _store_macro(n)
    group, groups = spec.group, spec.groups
    symbolic = not isinstance(rows, int)  # any row count: whole tiles, parallel, GEMV at run time
    mr = MR if symbolic else min(MR, rows)
    row_tiles = (rows + mr - 1) // mr
    loop = T.parallel if symbolic or rows * k * n >= 1 << 18 else T.serial
    gemv = rows == 1  # a condition of the kernel when rows is symbolic

    @T.prim_func
    def int4_matmul(
        x: T.Buffer(x_shape, "float32"),
        wp: T.Buffer((p_count, k, HALF), "uint8"),
        sp: T.Buffer((p_count, spec.groups, PANEL), spec.scale_dtype),
        zp: T.Buffer(z_shape, "uint8"),
        out: T.Buffer((*x_shape[:-1], n), "float32"),
    ):
        T.func_attr(_ATTRS)
        xf = T.decl_buffer((rows, k), "float32", data=x.data)
        of = T.decl_buffer((rows, n), "float32", data=out.data)
        for p in loop(p_count):
            acc = T.decl_buffer((2 * mr,), f"float32x{LANES}", scope="local")
            tail = T.decl_buffer((LANES,), "float32", scope="local")
            sz = T.decl_buffer((4,), f"float32x{LANES}", scope="local")
            if gemv:
                acc[0] = T.broadcast(T.float32(0), LANES)
                acc[1] = T.broadcast(T.float32(0), LANES)
                for g in range(groups):
                    load_group(sz, sp, zp, p, g)
                    for j in range(T.min(group, k - g * group)):
                        w0, w1 = T.meta_var(weights(wp, sz, p, g * group + j))
                        xv = T.meta_var(T.broadcast(xf[0, g * group + j], LANES))
                        acc[0] = _fma(xv, w0, acc[0])
                        acc[1] = _fma(xv, w1, acc[1])
                store(of, tail, 0, p * PANEL, acc[0])
                store(of, tail, 0, p * PANEL + LANES, acc[1])
            else:
                wd = T.decl_buffer((k, PANEL), "float32")
                for g in range(groups):
                    load_group(sz, sp, zp, p, g)
                    for j in range(T.min(group, k - g * group)):
                        w0, w1 = T.meta_var(weights(wp, sz, p, g * group + j))
                        wd[g * group + j, T.ramp(0, 1, LANES)] = w0
                        wd[g * group + j, T.ramp(LANES, 1, LANES)] = w1
                for t in range(row_tiles):
                    for i in T.unroll(2 * mr):
                        acc[i] = T.broadcast(T.float32(0), LANES)
                    for kk in range(k):
                        for r in T.unroll(mr):
                            xv = T.meta_var(T.broadcast(xf[T.min(t * mr + r, rows - 1), kk], LANES))
                            acc[2 * r] = _fma(xv, wd[kk, T.ramp(0, 1, LANES)], acc[2 * r])
                            acc[2 * r + 1] = _fma(
                                xv, wd[kk, T.ramp(LANES, 1, LANES)], acc[2 * r + 1]
                            )
                    for r in T.unroll(mr):
                        if t * mr + r < rows:
                            store(of, tail, t * mr + r, p * PANEL, acc[2 * r])
                            store(of, tail, t * mr + r, p * PANEL + LANES, acc[2 * r + 1])

    return int4_matmul
