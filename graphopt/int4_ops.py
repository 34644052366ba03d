"""The int4-weight matmul op that `lower-int4` emits and a target's stage materializes.

    y [.., N] = x [.., K] (fp32) @ W,  W[k, n] = (q[n, k] - z[n, g]) * s[n, g],  g = k // group

The call's operands after x are the constants in natural layout (`compress/int4/quant.py`):
`packed` uint8 [N, ceil(K / 2)] (k = 2i in the low nibble of byte i), `scales` fp32 [N, G],
`zeros` uint8 [N, G] (asymmetric; symmetric: uint8 [1], the zero point is 8); scales may be
fp16 (`scale_dtype`), read as their exact fp32 value. The portable kernel (`portable_kernel`,
emitted by `lower-int4` and by the MatMulNBits importer) carries the spec (`RECIPE_ATTR`,
JSON) so a target stage (`materialize-int4` on CPUs) can replace it with a kernel for its
instructions and repack the constants. Each product x * W[k, n] is accumulated in fp32 in
k order (fused multiply-adds where the target has FMA); `reference_matmul` is the numpy
model of it. With `act == "int8"` the op is W4A8 instead: x quantized per row at run time and
integer dot products per group (`graphopt.int4_a8_ops`, its arithmetic and numpy model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.matmul_recipe import Dim, MatmulRecipe, recipe_on, row_count, tir_shape

RECIPE_ATTR = "graphopt.int4_kernel"


@dataclass(frozen=True)
class Int4MatmulSpec(MatmulRecipe):
    x_shape: tuple[Dim, ...]  # x's full shape (symbolic dims by name); rows: all but the last
    n: int
    group: int
    symmetric: bool
    layout: str = "natural"  # natural | a target's packed layout (e.g. "cpu16")
    scale_dtype: str = "float32"  # float32 | float16 (converted to fp32 exactly when read)
    act: str = "float32"  # float32 (W4 x fp32) | int8 (W4A8: rows quantized at run time)

    @property
    def k(self) -> int:
        return int(self.x_shape[-1])

    @property
    def groups(self) -> int:
        return -(-self.k // self.group)


def spec_of(func) -> Int4MatmulSpec | None:
    """The spec of an int4 kernel, or None when `func` is none."""
    return recipe_on(func, RECIPE_ATTR, Int4MatmulSpec)


def dequantized_weight(spec: Int4MatmulSpec, packed, scales, zeros) -> np.ndarray:
    """fp32 W [K, N] from natural-layout constants: (q - z) * s in fp32."""
    k = spec.k
    q = np.empty((spec.n, packed.shape[1] * 2), np.uint8)
    q[:, 0::2] = packed & 15
    q[:, 1::2] = packed >> 4
    q = q[:, :k].astype(np.float32)
    z = np.float32(8) if spec.symmetric else np.repeat(zeros.astype(np.float32), spec.group, 1)
    zk = z if np.ndim(z) == 0 else z[:, :k]
    sk = np.repeat(scales.astype(np.float32), spec.group, axis=1)[:, :k]
    return np.ascontiguousarray(((q - zk) * sk).T)


def reference_matmul(
    x, packed, scales, zeros, spec: Int4MatmulSpec, fma: bool = True
) -> np.ndarray:
    """numpy model of the op: fp32 products summed in k order. fma: each step is one fused
    multiply-add, acc = round(acc + x * w) (what LLVM emits for x86 with FMA; modelled in
    float64, where the product is exact), else the product is rounded first."""
    w = dequantized_weight(spec, packed, scales, zeros)
    xf = np.asarray(x, np.float32).reshape(spec.rows, spec.k)
    acc = np.zeros((spec.rows, spec.n), np.float32)
    for kk in range(spec.k):
        if fma:
            prod = xf[:, kk : kk + 1].astype(np.float64) * w[kk].astype(np.float64)
            acc = (acc.astype(np.float64) + prod).astype(np.float32)
        else:
            acc = acc + xf[:, kk : kk + 1] * w[kk]
    return acc.reshape(spec.out_shape)


_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


def portable_kernel(spec: Int4MatmulSpec) -> tvm.tirx.PrimFunc:
    """The op as plain scalar TIR over natural-layout constants (builds and runs on any
    target; only the row loop is parallel, nothing is fast): PrimFunc(x, packed, scales,
    zeros, out), carrying its spec. A target stage replaces it (`materialize-int4`)."""
    if spec.act == "int8":
        from graphopt.int4_a8_ops import portable_a8_kernel

        return portable_a8_kernel(spec)
    x_shape = tir_shape(spec.x_shape)  # symbolic dims: size vars
    rows, k, n, group = row_count(x_shape), spec.k, spec.n, spec.group
    z_shape = (1,) if spec.symmetric else (n, spec.groups)

    def zero(zeros, j, kk):
        if spec.symmetric:
            return T.float32(8.0)
        return T.Cast("float32", zeros[j, kk // group])

    @T.prim_func
    def int4_matmul(
        x: T.Buffer(x_shape, "float32"),
        packed: T.Buffer((n, (k + 1) // 2), "uint8"),
        scales: T.Buffer((n, spec.groups), spec.scale_dtype),
        zeros: T.Buffer(z_shape, "uint8"),
        out: T.Buffer((*x_shape[:-1], n), "float32"),
    ):
        T.func_attr(_ATTRS)
        xf = T.decl_buffer((rows, k), "float32", data=x.data)
        of = T.decl_buffer((rows, n), "float32", data=out.data)
        for m in T.parallel(rows):
            acc = T.decl_buffer((1,), "float32", scope="local")
            for j in range(n):
                acc[0] = T.float32(0)
                for kk in range(k):
                    byte = T.Cast("int32", packed[j, kk // 2])
                    q = T.Cast("float32", T.shift_right(byte, (kk % 2) * 4) & 15)
                    s = T.Cast("float32", scales[j, kk // group])
                    wv = (q - zero(zeros, j, kk)) * s
                    acc[0] = acc[0] + xf[m, kk] * wv
                of[m, j] = acc[0]

    return int4_matmul.without_attr("global_symbol").with_attr(RECIPE_ATTR, spec.text())
