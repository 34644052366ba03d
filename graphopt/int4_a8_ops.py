"""The W4A8 form of the int4-weight matmul op (`Int4MatmulSpec.act == "int8"`).

Each row of x is quantized at run time as the int8 flow's dynamic per-row quantization does
(`compress/int8/qdq.emit_dynamic_qdq`), then every group of the int4 weights is an exact
integer dot product:

    s_m    = max(max_k |x[m, k]|, 1e-8) / 127                       (fp32)
    a[m,k] = clamp(round_half_even(x[m, k] / s_m), -128, 127)       (int8)
    acc_g  = sum_{k in g} a[m, k] * q[n, k]  -  z[n, g] * sum_{k in g} a[m, k]    (int32)
    y      = sum over g in order of f32(acc_g) * f32(s[n, g])   (one fused multiply-add a group)
    out    = y * s_m

The zero point leaves the dot product (its term uses the activations' group sums), so the
unsigned nibbles are the instruction's operands as they are. |acc_g| < 2^18 for groups of up
to 128: exact in int32 and in fp32. `reference_a8_matmul` is the numpy model a target's kernel
is checked against bit for bit; `portable_a8_kernel` the same arithmetic in scalar TIR.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from graphopt.int4_ops import RECIPE_ATTR, Int4MatmulSpec
from graphopt.matmul_recipe import row_count, tir_shape

EPS = 1e-8  # the int8 flow's DYNAMIC_EPS: an all-zero row must not divide by zero
QMAX = 127.0
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [rows, K] fp32 -> (int8 codes as int32 [rows, K], fp32 scale per row [rows])."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    s = (np.maximum(amax, np.float32(EPS)) / np.float32(QMAX)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.round(x / s[:, None]), -128, 127)
    return q.astype(np.int32), s


def codes(spec: Int4MatmulSpec, packed: np.ndarray) -> np.ndarray:
    """The nibbles [N, K] as int64 from natural packed bytes."""
    q = np.empty((spec.n, packed.shape[1] * 2), np.int64)
    q[:, 0::2] = packed & 15
    q[:, 1::2] = packed >> 4
    return q[:, : spec.k]


def group_dots(spec: Int4MatmulSpec, a: np.ndarray, packed, zeros) -> np.ndarray:
    """acc [rows, N, G] (int64): each group's integer dot product, zero point included."""
    q, g = codes(spec, packed), spec.group
    acc = np.empty((a.shape[0], spec.n, spec.groups), np.int64)
    for j in range(spec.groups):
        aj = a[:, j * g : (j + 1) * g].astype(np.int64)
        z = np.int64(8) if spec.symmetric else zeros[:, j].astype(np.int64)
        acc[:, :, j] = aj @ q[:, j * g : (j + 1) * g].T - aj.sum(1, keepdims=True) * z
    return acc


def reference_a8_matmul(x, packed, scales, zeros, spec: Int4MatmulSpec) -> np.ndarray:
    """numpy model of the W4A8 op (module docstring); the fused multiply-add of a group is
    modelled in float64, where f32(acc) * scale is exact."""
    a, s_row = quantize_rows(np.asarray(x, np.float32).reshape(spec.rows, spec.k))
    acc = group_dots(spec, a, packed, zeros).astype(np.float32).astype(np.float64)
    sc = np.asarray(scales).astype(np.float32).astype(np.float64)
    y = np.zeros((spec.rows, spec.n), np.float32)
    for j in range(spec.groups):
        y = (y.astype(np.float64) + acc[:, :, j] * sc[None, :, j]).astype(np.float32)
    return (y * s_row[:, None]).reshape(spec.out_shape)


def fake_quant_rows(x: np.ndarray) -> np.ndarray:
    """x with each row (last axis) rounded as the W4A8 kernels round it, back in fp32."""
    flat = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
    a, s = quantize_rows(flat)
    return (a.astype(np.float32) * s[:, None]).reshape(x.shape)


def portable_a8_kernel(spec: Int4MatmulSpec):
    """The W4A8 op as scalar TIR over natural-layout constants (any target; slow): each row
    quantized into a scratch row, then the group dot products of every column."""
    x_shape = tir_shape(spec.x_shape)  # symbolic dims: size vars
    rows, k, n, group, groups = row_count(x_shape), spec.k, spec.n, spec.group, spec.groups
    z_shape = (1,) if spec.symmetric else (n, groups)

    def zero(zeros, j, g):
        return T.int32(8) if spec.symmetric else T.Cast("int32", zeros[j, g])

    @T.prim_func
    def int4_a8_matmul(
        x: T.Buffer(x_shape, "float32"),
        packed: T.Buffer((n, (k + 1) // 2), "uint8"),
        scales: T.Buffer((n, groups), spec.scale_dtype),
        zeros: T.Buffer(z_shape, "uint8"),
        out: T.Buffer((*x_shape[:-1], n), "float32"),
    ):
        T.func_attr(_ATTRS)
        xf = T.decl_buffer((rows, k), "float32", data=x.data)
        of = T.decl_buffer((rows, n), "float32", data=out.data)
        for m in T.parallel(rows):
            a = T.decl_buffer((k,), "int32")
            st = T.decl_buffer((4,), "float32", scope="local")  # amax, scale, y
            acc = T.decl_buffer((2,), "int32", scope="local")  # dot, activation sum
            st[0] = T.float32(0)
            for kk in range(k):
                st[0] = T.max(st[0], T.fabs(xf[m, kk]))
            st[1] = T.max(st[0], T.float32(EPS)) / T.float32(QMAX)
            for kk in range(k):
                v = T.round(xf[m, kk] / st[1])
                a[kk] = T.Cast("int32", T.min(T.max(v, T.float32(-128)), T.float32(127)))
            for j in range(n):
                st[2] = T.float32(0)
                for g in range(groups):
                    acc[0] = 0
                    acc[1] = 0
                    for kk in range(g * group, T.min(k, g * group + group)):
                        byte = T.Cast("int32", packed[j, kk // 2])
                        acc[0] = acc[0] + a[kk] * (T.shift_right(byte, (kk % 2) * 4) & 15)
                        acc[1] = acc[1] + a[kk]
                    dot = acc[0] - zero(zeros, j, g) * acc[1]
                    st[2] = st[2] + T.Cast("float32", dot) * T.Cast("float32", scales[j, g])
                of[m, j] = st[2] * st[1]

    return int4_a8_matmul.without_attr("global_symbol").with_attr(RECIPE_ATTR, spec.text())
