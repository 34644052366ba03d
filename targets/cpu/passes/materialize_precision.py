"""Build the 16-bit matmuls of `lower-precision` for the CPU, weights repacked for the kernel.

`lower-precision` leaves portable kernels (scalar TIR, natural [K, N] bits) that carry their
spec (`graphopt.precision_ops`). This pass, in the CPU schedule stage, replaces each with the
CPU kernel the target's instructions allow (`targets/cpu/precision/gate.py`): on an x86 CPU
with AVX512_BF16 a bf16 matmul becomes the `vdpbf16ps` kernel (pair-interleaved weights),
anywhere else the panel kernel that widens 16-bit weights in registers and runs fp32 FMAs.
The constants are repacked at compile time, still 16 bits a weight.
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
    """Portable 16-bit matmuls -> the CPU kernels (vdpbf16ps where the target has it)."""

    name = "materialize-precision"

    def run(self, mod: tvm.IRModule) -> PassResult:
        target = tvm.target.Target.current(allow_none=True)
        built = {}
        for gvar, func in mod.functions.items():
            spec = spec_of(func)
            if spec is not None and spec.layout == "natural":
                built[gvar] = M.build(spec, target)
        stats = {"kernels": len(built), "calls": 0}
        stats["dpbf16_kernels"] = sum(e[2] == M.DPBF16 for e in built.values())
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
        _func, pack, _kind = entry
        x, w = list(call.args[1].fields)
        (packed,) = packed_constants("materialize-precision", call, [w], pack)
        self.calls += 1
        return relax.call_tir(self.renamed[call.args[0]], relax.Tuple([x, packed]), call.ty)
