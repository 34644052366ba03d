"""Fold the elementwise ops after a 16-bit matmul into its kernel, so its output is written once.

Before:  y = call_tir(matmul16, (x, W)); b = add(y, bias); g = gelu(b) or clip(b, 0, 6)
         r = add(g, skip)
After:   r = call_tir(matmul16', (x, W, bias, skip))  # spec: bias, GELU or clamp, residual

`lower-precision`'s 16-bit matmul kernels are opaque to `tvm.FuseOps` (their bodies are loops,
not blocks), so without this pass every bias add, activation and residual add after one is a
kernel of its own that reads and writes the whole activation again (MobileNetV2: 34 pointwise
convs, MiniLM: 34 matmuls). Taken, through single-use bindings, in this order: a bias add of
one constant per output channel, then GELU (`relax.nn.gelu`, or the erf form exporters write:
`h * (erf(h / sqrt 2) + 1) * 0.5`) or ReLU / clip / max / min clamps, then an add of another
tensor of the output's shape. The kernel computes each step in fp32 as the graph does (GELU
with the polynomial erf `fast-erf` gives the graph: `graphopt.precision_epilogue`).

The 16-bit depthwise convs (`graphopt.precision_depthwise`) take their bias and clamp the same
way (no GELU, no residual add: MobileNetV2 and EfficientNet-Lite0 follow theirs with ReLU6).
Only the portable kernels with no epilogue yet are taken (a target's `materialize-precision`
builds the fused spec for its instructions). Counters: `fused` (kernels given an epilogue),
`bias`, `gelu`, `clamp`, `residual` (steps folded).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tvm
from tvm import relax

from graphopt.binding_graph import (
    BindingGraph,
    epilogue_chain,
    gelu_tail,
    op_name,
    residual_add,
)
from graphopt.pass_helpers import KernelCall, PlannedCalls, rewrite_planned
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_epilogue import has_epilogue
from graphopt.precision_kernels import kernel_name, portable_for, spec_of16
from graphopt.precision_ops import PrecisionMatmulSpec


@register_pass
class FusePrecisionEpilogue(GraphPass):
    """Bias, GELU / clamp and residual adds after 16-bit matmuls folded into their kernels."""

    name = "fuse-precision-epilogue"

    def run(self, mod: tvm.IRModule) -> PassResult:
        stats = dict.fromkeys(("fused", "bias", "gelu", "clamp", "residual"), 0)
        canonical = relax.transform.CanonicalizeBindings()(mod)  # no var-to-var aliases
        kernels: dict = {}
        new = rewrite_planned(
            canonical,
            lambda graph: _plans(graph, stats),
            lambda module, plans: PlannedCalls(module, plans, kernels, portable_for, kernel_name),
        )
        return PassResult(mod, False, stats) if new is None else PassResult(new, True, stats)


def _plans(graph: BindingGraph, stats: dict) -> dict:
    """tail var -> KernelCall for every portable 16-bit matmul with an epilogue to fold."""
    plans = {}
    for var in graph.order:
        call = graph.value[var]
        spec = _portable_spec(graph, call)
        if spec is None:
            continue
        matmul = isinstance(spec, PrecisionMatmulSpec)
        channels = spec.n if matmul else spec.channels
        tail, bias, lo, hi, _ = epilogue_chain(graph, var, "matmul", channels, True)
        gelu = None
        if matmul and math.isinf(lo) and math.isinf(hi) and bias is not None:
            gelu = gelu_tail(graph, tail)
            tail = tail if gelu is None else gelu
        residual = residual_add(graph, tail) if matmul else None
        tail = residual[0] if residual else tail
        steps = {"bias": bias is not None, "lo": lo, "hi": hi}
        if matmul:
            steps.update(gelu=gelu is not None, residual=residual is not None)
        spec = dataclasses.replace(spec, **steps)
        if not has_epilogue(spec):
            continue
        args = list(call.args[1].fields)
        if bias is not None:
            args.append(relax.const(bias.astype(np.float32)))
        if residual is not None:
            args.append(residual[1])
        plans[tail] = KernelCall(spec, args, call.ty)
        _count(stats, spec)
    return plans


def _count(stats: dict, spec) -> None:
    stats["fused"] += 1
    stats["bias"] += spec.bias
    stats["gelu"] += spec.gelu
    stats["clamp"] += spec.lo > -math.inf or spec.hi < math.inf
    stats["residual"] += spec.residual


def _portable_spec(graph: BindingGraph, call):
    """The spec of a call_tir of a portable 16-bit matmul or depthwise conv without an
    epilogue, else None."""
    if op_name(call) != "relax.call_tir" or not isinstance(call.args[0], tvm.ir.GlobalVar):
        return None
    spec = spec_of16(graph.mod[call.args[0]])
    if spec is None or spec.layout != "natural" or has_epilogue(spec):
        return None
    return spec if len(call.args[1].fields) == 2 else None
