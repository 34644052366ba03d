"""Build the 16-bit matmuls of `lower-precision` for the CPU, weights repacked for the kernel.

`lower-precision` leaves portable kernels (scalar TIR, natural [K, N] bits) that carry their
spec (`graphopt.precision_ops`). This pass, in the CPU schedule stage, replaces each with the
panel kernel every CPU runs (`targets/cpu/precision/kernels.py`: 16-bit weights widened in
registers, fp32 FMAs) and repacks the constants at compile time, still 16 bits a weight. What
the target's own 16-bit instructions would allow (AVX512_BF16, AVX512_FP16, ARM +bf16 /
+fullfp16) is said in the compile report (`graphopt.precision_ops.kernel_note`); no kernel
uses them yet (docs/PRECISION.md).
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_ops import spec_of
from graphopt.targets.cpu.passes._swap import (
    add_kernels,
    packed_constants,
    portable_entry,
    swap_kernels,
)
from graphopt.targets.cpu.precision import materialize as M


@register_pass
class MaterializePrecision(GraphPass):
    """Portable 16-bit matmuls -> the CPU panel kernels (16-bit weights, fp32 FMAs)."""

    name = "materialize-precision"

    def run(self, mod: tvm.IRModule) -> PassResult:
        built = {}
        for gvar, func in mod.functions.items():
            spec = spec_of(func)
            if spec is not None and spec.layout == "natural":
                built[gvar] = M.build(spec)
        stats = {"kernels": len(built), "calls": 0}
        if not built:
            return PassResult(mod, False, stats)
        mutator = _Materialize(mod, built)
        new = swap_kernels(mod, built, mutator)
        stats["calls"] = mutator.calls
        return PassResult(new, True, stats)


@relax.expr_functor.mutator
class _Materialize(relax.PyExprMutator):
    """Points the calls of portable 16-bit kernels at the CPU kernels, weights repacked."""

    def __init__(self, mod: tvm.IRModule, built: dict) -> None:
        super().__init__(mod)
        self.built = built
        self.renamed = add_kernels(self.builder_, built, lambda entry: entry[0])
        self.calls = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        entry = portable_entry(call, self.built)
        if entry is None:
            return call
        _func, pack = entry
        x, w = list(call.args[1].fields)
        (packed,) = packed_constants("materialize-precision", call, [w], pack)
        self.calls += 1
        return relax.call_tir(self.renamed[call.args[0]], relax.Tuple([x, packed]), call.ty)
