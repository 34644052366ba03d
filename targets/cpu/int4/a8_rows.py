"""The first step of the W4A8 kernels: x's rows quantized to int8 words at run time.

Each row gets the int8 flow's dynamic per-row scale and codes (`graphopt.int4_a8_ops`),
16 values at a time, packed into words of kp codes (int16 pairs for kp = 2, bytes for 4) as
the dot instructions read them, and per group of the weights the sum of its codes (the
zero-point term of the group's dot product).
"""

from __future__ import annotations

from tvm.script import tirx as T

from graphopt.int4_a8_ops import EPS, QMAX
from graphopt.int4_ops import Int4MatmulSpec
from graphopt.targets.cpu.int8 import kernels as K8

QV = 16  # activation values quantized at a time


def quantize_rows_macro(spec: Int4MatmulSpec, kp: int):
    """TIR macro: row m of x -> its scale xs[m], words[m, :] of int8 codes, group sums."""
    k, group = spec.k, spec.group
    kw = -(-k // kp)

    qv, narrow = QV, {2: "int16", 4: "int8"}[kp]
    kvec, wvec = k // qv * qv, kw * kp // qv * qv  # values done qv at a time

    def code(v, s, n: int):
        """int32 code(s) of fp32 value(s) v with scale s (n lanes)."""
        if n == 1:
            q = T.min(T.max(T.round(v / s), T.float32(-128)), T.float32(127))
            return T.Cast("int32", q)
        lo, hi = T.broadcast(T.float32(-128), n), T.broadcast(T.float32(127), n)
        return T.Cast(f"int32x{n}", T.min(T.max(T.round(v / T.broadcast(s, n)), lo), hi))

    @T.macro
    def quantize(xf, xs, words, asum, m):
        a = T.decl_buffer((kw * kp,), "int32")
        vmax = T.decl_buffer((qv,), "float32", scope="local")
        amax = T.decl_buffer((1,), "float32", scope="local")
        vmax[T.ramp(0, 1, qv)] = T.broadcast(T.float32(0), qv)
        for kb in range(kvec // qv):
            vmax[T.ramp(0, 1, qv)] = T.max(
                vmax[T.ramp(0, 1, qv)], T.fabs(xf[m, T.ramp(kb * qv, 1, qv)])
            )
        amax[0] = T.float32(0)
        for j in range(qv):
            amax[0] = T.max(amax[0], vmax[j])
        for kk in range(kvec, k):
            amax[0] = T.max(amax[0], T.fabs(xf[m, kk]))
        xs[m] = T.max(amax[0], T.float32(EPS)) / T.float32(QMAX)
        for kb in range(kvec // qv):
            a[T.ramp(kb * qv, 1, qv)] = code(xf[m, T.ramp(kb * qv, 1, qv)], xs[m], qv)
        for kk in range(kvec, k):
            a[kk] = code(xf[m, kk], xs[m], 1)
        for kk in range(k, kw * kp):
            a[kk] = 0
        for g in range(spec.groups):
            asum[m, g] = 0
            for kk in range(g * group, T.min(k, g * group + group)):
                asum[m, g] = asum[m, g] + a[kk]
        for kb in range(wvec // qv):
            words[m, T.ramp(kb * (qv // kp), 1, qv // kp)] = T.reinterpret(
                f"int32x{qv // kp}", T.Cast(f"{narrow}x{qv}", a[T.ramp(kb * qv, 1, qv)])
            )
        for kq in range(wvec // kp, kw):
            words[m, kq] = K8._word([a[kq * kp + j] for j in range(kp)], kp)

    return quantize
