"""Matmuls over channels whose constant weight is mostly zero blocks -> block-sparse ops.

Matches, with W an fp32 constant:

    y = conv2d(x, W)  NHWC, 1x1, stride 1, no padding, one group (a matmul over channels)
    y = matmul(x, W)  W [K, N] (Gemm / dense / MatMul after fold-constants)
    [+ bias constant per output channel] [GELU (relax.nn.gelu or the erf form exporters
    write) | relu | clip | max / min with a scalar]
    [+ another tensor of the output's shape: a residual join]

and, where the fraction of nonzero `block` x 1 blocks of W (`block` consecutive output
channels of one input channel) is at most `max_density`, replaces the chain by one call of
the block-sparse op of `graphopt.sparse_ops` (portable kernel, weights as BSR: only nonzero
blocks stored). Layers above the threshold, and weights with no zeros, stay as they were.

The block size and the threshold are the target's (the x86 stage passes its SIMD width and
its measured break-even density: docs/SPARSITY.md); the pass itself generates no target code:
`materialize-sparse` swaps in the vectorized kernel. Counters: `layers_sparse`,
`layers_dense` (candidates kept dense), `layers_scattered_zeros` (kept dense although at
least half their weights are zero: the zeros are not in whole blocks), `gelus` and
`residual_adds` (folded in),
`weight_bytes_dense` / `weight_bytes_sparse` (of the layers made sparse: stored before /
after, indices included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from graphopt.binding_graph import (
    BindingGraph,
    const_value,
    epilogue_chain,
    gelu_tail,
    op_name,
    residual_add,
    shape_dims,
)
from graphopt.errors import PipelineError
from graphopt.pass_helpers import KernelCall, PlannedCalls, rewrite_planned
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.passes._sparse_reference import reference_kernel
from graphopt.sparse_ops import SparseSpec, block_density, to_bsr


@register_pass
class Sparsify(GraphPass):
    """Block-sparse constant weights of 1x1 convs (NHWC) and matmuls -> BSR ops."""

    name = "sparsify"

    @dataclass(frozen=True)
    class Options:
        # Output channels per block (the target's SIMD width in fp32 lanes).
        block: int = 8
        # A wider block (two registers: half the broadcasts per FMA) taken when the zeros
        # come in such blocks too (its density at most 5% above `block`'s); 0: never.
        wide_block: int = 0
        # Largest fraction of nonzero blocks that still takes the sparse op (break-even).
        max_density: float = 0.5
        # Smallest weight (K * N) worth a sparse op.
        min_weights: int = 1024
        # Shortest reduction (input channels) worth a sparse op (0: any).
        min_k: int = 0
        # Fold an add of another tensor of the output's shape (a residual join) into the op.
        residual: bool = True

    def run(self, mod: tvm.IRModule) -> PassResult:
        if self.options.block < 1 or not 0.0 <= self.options.max_density <= 1.0:
            raise PipelineError("sparsify: block >= 1 and 0 <= max_density <= 1")
        stats = {"layers_sparse": 0, "layers_dense": 0, "layers_scattered_zeros": 0}
        stats.update(residual_adds=0, gelus=0)
        stats.update(weight_bytes_dense=0, weight_bytes_sparse=0)
        kernels: dict = {}
        new = rewrite_planned(
            mod,
            lambda graph: self._plans(graph, stats),
            lambda module, plans: PlannedCalls(
                module, plans, kernels, reference_kernel, "bsr_matmul"
            ),
        )
        return PassResult(mod, False, stats) if new is None else PassResult(new, True, stats)

    def _block(self, w: np.ndarray) -> int | None:
        """The block size for W [K, N]: the wide block where the zeros allow, else `block`
        (or half of it, to tile N); None when neither tiles N."""
        block = _block_for(w.shape[1], self.options.block)
        wide = self.options.wide_block
        if block is not None and wide > block and _wide_pays(w, block, wide):
            return wide
        return block

    def _plans(self, graph: BindingGraph, stats: dict) -> dict:
        """tail var -> _Plan for every layer that goes sparse."""
        plans = {}
        for var in graph.order:
            layer = _match(graph, var)
            if layer is None:
                continue
            x, w = layer
            k, n = w.shape
            block = self._block(w)
            small = k * n < self.options.min_weights or k < self.options.min_k
            if small or block is None:
                continue
            if block_density(w, block) > self.options.max_density:
                stats["layers_dense"] += 1
                stats["layers_scattered_zeros"] += int(np.count_nonzero(w) <= w.size // 2)
                continue
            tail, bias, lo, hi, _ = epilogue_chain(graph, var, "matmul", n, True)
            gelu = gelu_tail(graph, tail) if math.isinf(lo) and math.isinf(hi) else None
            tail = tail if gelu is None else gelu
            residual = residual_add(graph, tail) if self.options.residual else None
            tail = residual[0] if residual else tail
            values, indices, indptr = to_bsr(w, block)
            bias = np.zeros(n, np.float32) if bias is None else bias
            epilogue = (lo, hi, residual is not None, gelu is not None)
            spec = SparseSpec(shape_dims(x), n, block, len(indices), *epilogue)
            args = [x, *(relax.const(c) for c in (values, indices, indptr, bias))]
            out_shape = [*x.ty.shape.values[:-1], n]  # symbolic dims as the graph has them
            out_ty = relax.TensorType(relax.ShapeExpr(out_shape), "float32")
            plans[tail] = KernelCall(spec, args + [residual[1]] if residual else args, out_ty)
            stats["layers_sparse"] += 1
            stats["residual_adds"] += residual is not None
            stats["gelus"] += gelu is not None
            stats["weight_bytes_dense"] += w.nbytes
            stats["weight_bytes_sparse"] += values.nbytes + indices.nbytes + indptr.nbytes
        return plans


def _block_for(n: int, block: int) -> int | None:
    """The block that tiles N: `block`, else its largest divisor that divides N, down to half
    a block (1000 classes in 8-blocks on a 16-lane target); None when none does."""
    size = math.gcd(n, block)
    return size if size * 2 >= block else None


def _wide_pays(w: np.ndarray, block: int, wide: int) -> bool:
    """The zeros come in `wide` blocks about as well as in `block` blocks."""
    return w.shape[1] % wide == 0 and block_density(w, wide) <= 1.05 * block_density(w, block)


def _match(graph: BindingGraph, var) -> tuple[relax.Expr, np.ndarray] | None:
    """(x, W [K, N]) when `var` is a matmul over channels with an fp32 constant weight."""
    call = graph.value[var]
    op = op_name(call)
    if op not in ("relax.nn.conv2d", "relax.matmul"):
        return None
    x, w = call.args[0], const_value(graph.resolve(call.args[1]))
    dims = shape_dims(x)
    if w is None or w.dtype != np.float32 or dims is None or len(dims) < 2:
        return None
    if str(x.ty.dtype) != "float32" or str(call.ty.dtype) != "float32":
        return None
    if op == "relax.matmul":
        return (x, w) if w.ndim == 2 and w.shape[0] == dims[-1] else None
    return (x, w.reshape(w.shape[0], -1).T) if _pointwise_nhwc(call.attrs, w) else None


def _pointwise_nhwc(attrs, w: np.ndarray) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped NHWC conv with an OHWI weight: a matmul."""
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
    if tuple(str(s) for s in layouts) != ("NHWC", "OHWI", "NHWC"):
        return False
    ints = [int(v) for v in (*attrs.strides, *attrs.dilation, *attrs.padding)]
    plain = ints == [1, 1, 1, 1, 0, 0, 0, 0] and int(attrs.groups) == 1
    return plain and w.ndim == 4 and w.shape[1:3] == (1, 1)
