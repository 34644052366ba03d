"""The portable block-sparse matmul kernel `sparsify` emits: plain scalar TIR, exact on any
target; a target stage (`materialize-sparse` on CPUs) replaces it by a vectorized one."""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.sparse_ops import SparseSpec, epilogue, kernel_func


def reference_kernel(spec: SparseSpec) -> tvm.tirx.PrimFunc:
    """out[m, n] = clamp(bias[n] + sum over the blocks of n's block of x[m, k] * value)
    [+ residual[m, n]]."""
    dims = spec.kernel_dims()
    rows = dims[1]
    bs, nb = spec.block, spec.blocks

    @T.macro
    def body(xf, values, indices, indptr, bias, residual, of):
        acc = T.decl_buffer((1,), "float32", scope="local")
        for m, b, lane in T.grid(rows, nb, bs):
            acc[0] = T.float32(0)
            for j in range(indptr[b], indptr[b + 1]):
                acc[0] = acc[0] + xf[m, indices[j]] * values[j, lane]
            of[m, b * bs + lane] = epilogue(acc[0], spec, bias, residual, m, b * bs + lane)

    return kernel_func(body, spec, dims, {"tirx.noalias": True})
