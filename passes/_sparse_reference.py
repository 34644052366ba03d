"""The portable block-sparse matmul kernel `sparsify` emits: plain scalar TIR, exact on any
target; a target stage (`materialize-sparse` on CPUs) replaces it by a vectorized one."""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.sparse_ops import RECIPE_ATTR, SparseSpec, clamp


def reference_kernel(spec: SparseSpec) -> tvm.tirx.PrimFunc:
    """out[m, n] = clamp(bias[n] + sum over the blocks of n's block of x[m, k] * value)."""
    x_shape, rows = spec.kernel_dims()
    k, n, bs, nnzb, nb = spec.k, spec.n, spec.block, spec.nnzb, spec.blocks
    lo, hi = spec.lo, spec.hi

    @T.prim_func(private=True)
    def bsr_matmul(
        x: T.Buffer(x_shape, "float32"),
        values: T.Buffer((nnzb, bs), "float32"),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((nb + 1,), "int32"),
        bias: T.Buffer((n,), "float32"),
        out: T.Buffer((*x_shape[:-1], n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        xf = T.decl_buffer((rows, k), "float32", data=x.data)
        of = T.decl_buffer((rows, n), "float32", data=out.data)
        for m, b, lane in T.grid(rows, nb, bs):
            of[m, b * bs + lane] = bias[b * bs + lane]
            for j in range(indptr[b], indptr[b + 1]):
                of[m, b * bs + lane] = of[m, b * bs + lane] + xf[m, indices[j]] * values[j, lane]
            of[m, b * bs + lane] = clamp(of[m, b * bs + lane], lo, hi)

    return bsr_matmul.with_attr(RECIPE_ATTR, spec.text())
