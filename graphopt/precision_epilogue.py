"""The epilogue a 16-bit matmul kernel applies to its fp32 sums before storing them: bias add,
GELU, clamp (ReLU / ReLU6) and a residual add, folded in by `fuse-precision-epilogue` so the
output is written once instead of re-read by a chain of elementwise kernels.

`reference_epilogue` is its numpy model, `tir_epilogue` the expression every kernel stores,
`kernel_func` the PrimFunc signature shared by the kernels (x, w, [bias], [residual], out).
GELU is `graphopt.gelu`'s, the arithmetic the CPU targets' `fast-erf` pass gives the unfused
graph.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.gelu import numpy_gelu, tir_gelu
from graphopt.matmul_recipe import row_count
from graphopt.precision_ops import PrecisionMatmulSpec


def has_epilogue(spec: PrecisionMatmulSpec) -> bool:
    return spec.bias or spec.gelu or spec.residual or spec.lo > -math.inf or spec.hi < math.inf


def reference_epilogue(y, spec: PrecisionMatmulSpec, bias=None, residual=None) -> np.ndarray:
    """numpy model of the fused epilogue on the fp32 sums `y` [.., N]."""
    y = np.asarray(y, np.float32)
    if spec.bias:
        y = y + np.asarray(bias, np.float32)
    if spec.gelu:
        y = numpy_gelu(y)
    if spec.lo > -math.inf or spec.hi < math.inf:
        y = np.clip(y, np.float32(spec.lo), np.float32(spec.hi))
    if spec.residual:
        y = y + np.asarray(residual, np.float32).reshape(y.shape)
    return y.astype(np.float32)


def tir_epilogue(v, spec: PrecisionMatmulSpec, bias, residual, m, col, lanes: int = 1):
    """TIR: the epilogue of the fp32 sum `v` (a vector of `lanes` for lanes > 1) of row m,
    channels col.. (bias [N] and residual [rows, N] buffers; unused where the spec has none)."""

    def const(c):
        return T.float32(c) if lanes == 1 else T.broadcast(T.float32(c), lanes)

    idx = col if lanes == 1 else T.ramp(col, 1, lanes)
    if spec.bias:
        v = v + bias[idx]
    if spec.gelu:
        v = tir_gelu(v, lanes)
    if spec.lo > -math.inf:
        v = T.max(v, const(spec.lo))
    if spec.hi < math.inf:
        v = T.min(v, const(spec.hi))
    if spec.residual:
        v = v + residual[m, idx]
    return v


def kernel_func(body, spec: PrecisionMatmulSpec, x_shape, w_shape, w_dtype: str, attrs: dict):
    """The PrimFunc (x, w, [bias], [residual], out) of a 16-bit matmul kernel whose `body`
    macro takes (x [rows, K], w, bias, residual [rows, N] or None, out [rows, N])."""
    rows, k, n = row_count(x_shape), spec.k, spec.n
    x_dtype = "uint16" if spec.x_bits else "float32"  # bit patterns: `precision-handoff`
    out_dtype = "uint16" if spec.out_bits else "float32"
    out_shape = (*x_shape[:-1], n)
    if spec.residual:

        @T.prim_func
        def with_residual(
            x: T.Buffer(x_shape, x_dtype),
            w: T.Buffer(w_shape, w_dtype),
            bias: T.Buffer((n,), "float32"),
            residual: T.Buffer(out_shape, "float32"),
            out: T.Buffer(out_shape, out_dtype),
        ):
            T.func_attr(attrs)
            body(x.view(rows, k), w, bias, residual.view(rows, n), out.view(rows, n))

        func = with_residual
    else:

        @T.prim_func
        def plain(
            x: T.Buffer(x_shape, x_dtype),
            w: T.Buffer(w_shape, w_dtype),
            bias: T.Buffer((n,), "float32"),
            out: T.Buffer(out_shape, out_dtype),
        ):
            T.func_attr(attrs)
            body(x.view(rows, k), w, bias, None, out.view(rows, n))

        func = plain
    func = func.without_attr("global_symbol")  # named by the module it is added to
    if spec.bias:
        return func
    params = [p for p in func.params if p.name != "bias"]  # the body never reads it
    return tvm.tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)
