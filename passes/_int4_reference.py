"""Part of `lower-int4`: the portable kernel of the int4-weight matmul (`graphopt.int4_ops`).

Plain scalar TIR over the natural-layout constants (nibbles unpacked one at a time, the
weight dequantized as (q - z) * s in fp32, products summed in k order), so a lowered graph
builds and runs on any target as it is. Only the row loop is parallel; nothing here is fast:
a target stage (`materialize-int4`) replaces it.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.int4_ops import RECIPE_ATTR, Int4MatmulSpec

_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True}


def int4_matmul_reference(spec: Int4MatmulSpec) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, packed [N, ceil(K/2)], scales [N, G], zeros, out)."""
    rows, k, n, group = spec.rows, spec.k, spec.n, spec.group
    z_shape = (1,) if spec.symmetric else (n, spec.groups)

    def zero(zeros, j, kk):
        if spec.symmetric:
            return T.float32(8.0)
        return T.Cast("float32", zeros[j, kk // group])

    @T.prim_func
    def int4_matmul(
        x: T.Buffer(spec.x_shape, "float32"),
        packed: T.Buffer((n, (k + 1) // 2), "uint8"),
        scales: T.Buffer((n, spec.groups), spec.scale_dtype),
        zeros: T.Buffer(z_shape, "uint8"),
        out: T.Buffer(spec.out_shape, "float32"),
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
