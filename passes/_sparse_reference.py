"""The portable block-sparse matmul kernel `sparsify` emits: plain scalar TIR, exact on any
target; a target stage (`materialize-sparse` on CPUs) replaces it by a vectorized one."""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.sparse_ops import SparseSpec, epilogue, epilogue_nchw, kernel_func


def reference_kernel(spec: SparseSpec) -> tvm.tirx.PrimFunc:
    """out[m, n] = clamp(bias[n] + sum over the blocks of n's block of x[m, k] * value)
    [+ residual[m, n]]; NCHW: out[b, n, p] from x[b, k, p]."""
    if spec.nchw:
        return _reference_nchw(spec)
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


def _reference_nchw(spec: SparseSpec) -> tvm.tirx.PrimFunc:
    dims = spec.kernel_dims()
    images, pixels = dims[1], spec.pixels
    bs, nb = spec.block, spec.blocks

    @T.macro
    def body(xf, values, indices, indptr, bias, residual, of):
        acc = T.decl_buffer((1,), "float32", scope="local")
        for img, b, lane, p in T.grid(images, nb, bs, pixels):
            acc[0] = T.float32(0)
            for j in range(indptr[b], indptr[b + 1]):
                acc[0] = acc[0] + xf[img, indices[j], p] * values[j, lane]
            ch = T.meta_var(b * bs + lane)
            of[img, ch, p] = epilogue_nchw(acc[0], spec, bias, residual, img, ch, p)

    return kernel_func(body, spec, dims, {"tirx.noalias": True})
