"""Prune the constant weights of matmuls and 1x1 convs: zeros written into the constants.

The pruned weights come from `weights` (the .npz `--prune` writes: SparseGPT's masks and
updated weights, or per-layer levels; `compress/prune/store.py`; checked against the graph's
shapes), else every prunable layer (`compress/prune/layers.py`) not in `skip` is pruned here by
magnitude to `pattern` at `sparsity`:

    unstructured   the smallest weights of the layer
    nm             n of every m consecutive input weights of each output channel
    block          blocks of `block` consecutive output channels of `depth` consecutive input
                   channels (16 x 1; 16 x 4 is what the int8 sparse kernels skip)

    before:  y = conv2d(x, W)            W [N, K, 1, 1], or matmul(x, W) with W [K, N]
    after:   y = conv2d(x, W')           W' = W with zeros (and, from SparseGPT, updated weights)

The graph keeps computing densely; on x86 `sparsify` then turns layers whose zeros come in
blocks into block-sparse kernels (docs/SPARSITY.md). Counters: `layers_pruned`,
`weights_pruned` (weights of the pruned layers), `zeros` (among them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from graphopt.compress.common.layers import Layer, find_layers
from graphopt.compress.prune.layers import as_kn, from_kn, prunable
from graphopt.compress.prune.masks import fits, magnitude
from graphopt.compress.prune.spec import PATTERNS, PruneSpec
from graphopt.compress.prune.store import load_pruned
from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, PassResult, register_pass


@register_pass
class Prune(GraphPass):
    """Zero weights of matmuls and 1x1 convs: magnitude here, or precomputed (SparseGPT)."""

    name = "prune"

    @dataclass(frozen=True)
    class Options:
        weights: str = ""  # .npz of pruned weights by layer (--prune writes it); else magnitude
        pattern: str = "unstructured"  # magnitude: unstructured | nm | block
        sparsity: float = 0.5  # magnitude: fraction of weights (block: of blocks) zeroed
        n: int = 2  # nm: zeros in each group of m
        m: int = 4
        block: int = 16  # block: output channels per block
        depth: int = 1  # block: input channels per block
        skip: str = ""  # ":"-separated layer names left dense

    def run(self, mod: tvm.IRModule) -> PassResult:
        try:
            stored = load_pruned(self.options.weights)
        except (OSError, ValueError) as err:
            raise PipelineError(
                f"prune: cannot read weights {self.options.weights}: {err}"
            ) from err
        skip = set(filter(None, self.options.skip.split(":")))
        layers = [ly for ly in find_layers(mod["main"]) if prunable(ly) and ly.name not in skip]
        todo = {}
        for ly in layers:
            w = self._weights(ly, stored)
            if w is not None:
                todo[ly.name] = (ly, w)
        stats = {
            "layers_pruned": len(todo),
            "weights_pruned": sum(int(w.size) for _, w in todo.values()),
            "zeros": sum(int(np.sum(w == 0)) for _, w in todo.values()),
        }
        if not todo:
            return PassResult(mod, False, stats)
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        new["main"] = _Rewrite(todo).visit_expr(mod["main"])
        new = relax.transform.DeadCodeElimination()(new)
        return PassResult(new, True, stats)

    def _spec(self) -> PruneSpec:
        o = self.options
        if o.pattern not in PATTERNS:
            raise PipelineError(f"prune: pattern must be one of {', '.join(PATTERNS)}")
        if o.pattern == "nm" and not 0 < o.n < o.m:
            raise PipelineError("prune: nm needs 0 < n < m")
        if o.pattern != "nm" and not 0.0 <= o.sparsity < 1.0:
            raise PipelineError("prune: sparsity must be in [0, 1)")
        if o.block < 1 or o.depth < 1:
            raise PipelineError("prune: block and depth must be >= 1")
        level = o.n / o.m if o.pattern == "nm" else o.sparsity
        return PruneSpec(o.pattern, level, o.n, o.m, o.block, o.depth)

    def _weights(self, ly: Layer, stored: dict) -> np.ndarray | None:
        """The layer's pruned weight in its stored layout; None: left as it is."""
        if self.options.weights:
            w = stored.get(ly.name)
            if w is not None and list(w.shape) != ly.weight_shape:
                raise PipelineError(
                    f"prune: weights file {self.options.weights} does not match this graph "
                    f"({ly.name} is {ly.weight_shape}, the file has {list(w.shape)})"
                )
            return w
        spec = self._spec()
        w = as_kn(ly)
        if fits(spec, *w.shape) is not None:
            return None
        return from_kn(ly, magnitude(w, spec))


@mutator
class _Rewrite(PyExprMutator):
    """Each planned layer's call with its weight argument replaced by the pruned constant."""

    def __init__(self, todo: dict) -> None:
        super().__init__()
        self.todo = list(todo.values())

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        for ly, w in self.todo:
            if ly.call.same_as(call):
                args = [self.visit_expr(a) for a in call.args]
                args[1] = relax.const(w)
                return relax.Call(call.op, args, call.attrs, call.ty_args)
        return super().visit_call_(call)
