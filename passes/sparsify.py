"""Matmuls over channels whose constant weight is mostly zero blocks -> block-sparse ops.

Matches, with W an fp32 constant:

    y = conv2d(x, W)  NHWC, 1x1, stride 1, no padding, one group (a matmul over channels)
    y = matmul(x, W)  W [K, N] (Gemm / dense / MatMul after fold-constants)
    y = conv2d(x, W)  NCHW, the same 1x1 conv (static shapes), with `nchw_densities`
    [+ bias constant per output channel] [GELU (relax.nn.gelu or the erf form exporters
    write) | relu | clip | max / min with a scalar]
    [+ another tensor of the output's shape: a residual join]

and, where the fraction of nonzero `block` x 1 blocks of W (`block` consecutive output
channels of one input channel) is at most `max_density`, replaces the chain by one call of
the block-sparse op of `graphopt.sparse_ops` (portable kernel, weights as BSR: only nonzero
blocks stored). Layers above the threshold, and weights with no zeros, stay as they were.

In NCHW the kernel puts pixels in SIMD lanes and reads weights as scalars, so any zero
pattern can pay. `nchw_densities` gives each block size (8, 4, 2 or 1 output channels; 1:
unstructured zeros) its break-even density (smaller blocks reuse each input load less, so
they need more zeros); the block taken is the one whose density lies furthest below its own
break-even (threshold / density, the expected speed-up).

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
        # NCHW 1x1 convs: "block:density/..." (e.g. 8:0.6/4:0.5/2:0.3/1:0.2), the largest
        # fraction of nonzero blocks of each size that still takes the sparse op; empty: NCHW
        # convs stay dense.
        nchw_densities: str = ""

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
            x, w, layout = layer
            k, n = w.shape
            block = self._block(w) if layout == "rows" else self._nchw_block(w)
            small = k * n < self.options.min_weights or k < self.options.min_k
            if small or (block is None and layout == "rows"):
                continue
            limit = self.options.max_density if layout == "rows" else 1.0
            if block is None or block_density(w, block) > limit:
                stats["layers_dense"] += 1
                stats["layers_scattered_zeros"] += int(np.count_nonzero(w) <= w.size // 2)
                continue
            kind = "matmul" if layout == "rows" else "conv2d"
            tail, bias, lo, hi, _ = epilogue_chain(graph, var, kind, n, True)
            gelu = gelu_tail(graph, tail) if math.isinf(lo) and math.isinf(hi) else None
            tail = tail if gelu is None else gelu
            residual = residual_add(graph, tail) if self.options.residual else None
            tail = residual[0] if residual else tail
            values, indices, indptr = to_bsr(w, block)
            bias = np.zeros(n, np.float32) if bias is None else bias
            epilogue = (lo, hi, residual is not None, gelu is not None)
            spec = SparseSpec(shape_dims(x), n, block, len(indices), *epilogue, layout=layout)
            args = [x, *(relax.const(c) for c in (values, indices, indptr, bias))]
            out_ty = relax.TensorType(relax.ShapeExpr(_out_shape(x, n, layout)), "float32")
            plans[tail] = KernelCall(spec, args + [residual[1]] if residual else args, out_ty)
            stats["layers_sparse"] += 1
            stats["residual_adds"] += residual is not None
            stats["gelus"] += gelu is not None
            stats["weight_bytes_dense"] += w.nbytes
            stats["weight_bytes_sparse"] += values.nbytes + indices.nbytes + indptr.nbytes
        return plans

    def _nchw_block(self, w: np.ndarray) -> int | None:
        """NCHW: of the blocks in `nchw_densities` that divide N and whose density clears
        their threshold, the one with the most room below it (threshold / density: the
        threshold is the block's break-even, so this is its expected speed-up); None when
        none clears it, or NCHW convs are off."""
        best, best_gain = None, 1.0
        for block, limit in _densities(self.options.nchw_densities):
            if w.shape[1] % block:
                continue
            density = block_density(w, block)
            gain = limit / max(density, 1e-9)
            if density <= limit and gain >= best_gain:
                best, best_gain = block, gain
        return best


def _densities(text: str) -> list[tuple[int, float]]:
    """`nchw_densities` as (block, density) pairs; a one-line error when malformed."""
    pairs = []
    for item in filter(None, text.split("/")):
        block, _, density = item.partition(":")
        try:
            pair = int(block), float(density)
        except ValueError:
            pair = (0, 0.0)
        if pair[0] < 1 or not 0.0 < pair[1] <= 1.0:
            raise PipelineError(
                f"sparsify: nchw_densities item '{item}' is not block:density (8:0.6; a block "
                "of at least 1 channel, a density in (0, 1])"
            )
        pairs.append(pair)
    return pairs


def _out_shape(x: relax.Expr, n: int, layout: str) -> list:
    """The op's output shape, symbolic dims as the graph has them."""
    dims = list(x.ty.shape.values)
    return [dims[0], n, *dims[2:]] if layout == "nchw" else [*dims[:-1], n]


def _block_for(n: int, block: int) -> int | None:
    """The block that tiles N: `block`, else its largest divisor that divides N, down to half
    a block (1000 classes in 8-blocks on a 16-lane target); None when none does."""
    size = math.gcd(n, block)
    return size if size * 2 >= block else None


def _wide_pays(w: np.ndarray, block: int, wide: int) -> bool:
    """The zeros come in `wide` blocks about as well as in `block` blocks."""
    return w.shape[1] % wide == 0 and block_density(w, wide) <= 1.05 * block_density(w, block)


def _match(graph: BindingGraph, var) -> tuple[relax.Expr, np.ndarray, str] | None:
    """(x, W [K, N], layout) when `var` is a matmul over channels with an fp32 constant
    weight: "rows" (channels last), or "nchw" (a static 1x1 conv over NCHW)."""
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
        return (x, w, "rows") if w.ndim == 2 and w.shape[0] == dims[-1] else None
    if _pointwise(call.attrs, w, "NHWC"):
        return x, w.reshape(w.shape[0], -1).T, "rows"
    static = len(dims) == 4 and all(isinstance(d, int) for d in dims)
    if static and _pointwise(call.attrs, w, "NCHW"):
        return x, w.reshape(w.shape[0], -1).T, "nchw"
    return None


def _pointwise(attrs, w: np.ndarray, layout: str) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped conv in `layout` (NHWC with an OHWI weight: a
    matmul; NCHW with OIHW)."""
    kernel = {"NHWC": "OHWI", "NCHW": "OIHW"}[layout]
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
    if tuple(str(s) for s in layouts) != (layout, kernel, layout):
        return False
    ints = [int(v) for v in (*attrs.strides, *attrs.dilation, *attrs.padding)]
    plain = ints == [1, 1, 1, 1, 0, 0, 0, 0] and int(attrs.groups) == 1
    spatial = w.shape[1:3] if layout == "NHWC" else w.shape[2:4]
    return plain and w.ndim == 4 and spatial == (1, 1)
