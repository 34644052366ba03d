"""Capture the static parts of `main` into CUDA graphs (CUDA target, cuda_graphs=true).

TVM's RewriteCUDAGraph only acts when the pass context sets `relax.backend.use_cuda_graph`;
this pass sets it for that one pass, so the choice is a visible pipeline item rather than a
hidden global. Launch overhead per kernel drops on replay; the first run captures.
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_infra import GraphPass, PassResult, register_pass

CONFIG = "relax.backend.use_cuda_graph"


@register_pass
class CudaGraphs(GraphPass):
    """Rewrite static kernel sequences into CUDA graph capture and replay."""

    name = "cuda-graphs"

    def run(self, mod: tvm.IRModule) -> PassResult:
        with tvm.transform.PassContext(opt_level=3, config={CONFIG: True}):
            new = relax.transform.RewriteCUDAGraph()(mod)
        # RewriteCUDAGraph lifts each region into a function `<caller>_cuda_graph_capture<i>`.
        captured = sum(1 for gvar in new.functions if "_cuda_graph_capture" in gvar.name_hint)
        return PassResult(new, not _tvm.structural_equal(new, mod), {"captured": captured})
