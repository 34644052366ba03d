"""Build the int8 ops of `lower-int8` for the target's dot-product scheme, constants packed.

`lower-int8` leaves portable kernels that carry their recipe (`graphopt.int8_ops`), with the
op's constants in natural layout (int8 weights, int32 `corr`, fp32 scale and bias) in each
call. This pass, first in the CPU schedule stage, picks the scheme of the target being
compiled for (`isa_for_target`: vnni, avx2, sdot, else generic), replaces every portable kernel
by the CPU kernel for that scheme (`targets/cpu/int8/materialize.py`) and packs each call's
constants for it at compile time. Retargeting an int8 graph is running another target's
stage on the same lowered module. `isa` forces a scheme (tests, benchmarks; `auto`: the
current target, else this host); kernels a forced run already built are kept as they are
(their constants are packed: packing starts from the natural layout only).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.errors import PipelineError
from graphopt.int8_ops import recipe_of
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.int8 import materialize as M
from graphopt.targets.cpu.passes._swap import (
    add_kernels,
    packed_constants,
    portable_entry,
    swap_kernels,
)


@register_pass
class MaterializeInt8(GraphPass):
    """Portable int8 kernels -> the target's int8 kernels, constants packed for them."""

    name = "materialize-int8"

    @dataclass(frozen=True)
    class Options:
        # Dot-product scheme: auto (the current target's, else this host's) | vnni | avx2 |
        # sdot | generic.
        isa: str = "auto"

    def run(self, mod: tvm.IRModule) -> PassResult:
        isa = resolve_isa(self.options.isa)
        stats = {"kernels": 0, "calls": 0, "already_built": 0, f"isa_{isa.name}": 1}
        built = {}
        for gvar, func in mod.functions.items():
            recipe = recipe_of(func)
            if recipe is None:
                continue
            if recipe.isa is not None:  # built by an earlier materialize-int8{isa=..}: kept
                stats["already_built"] += 1
                continue
            built[gvar] = (recipe, *M.build(recipe, isa))
        stats["kernels"] = len(built)
        if not built:
            return PassResult(mod, False, stats)
        mutator = _Materialize(mod, built)
        new = swap_kernels(mod, built, mutator)
        stats["calls"] = mutator.calls
        return PassResult(new, True, stats)


def resolve_isa(name: str) -> K.Isa:
    """The scheme `isa=` names; `auto`: the current target's, else this host's."""
    if name == "auto":
        target = tvm.target.Target.current(allow_none=True)
        if target is None or target.kind.name != "llvm":
            target = _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
        return K.isa_for_target(target)
    if name not in K.ISAS:
        raise PipelineError(f"materialize-int8: unknown isa '{name}' (auto, {', '.join(K.ISAS)})")
    return K.ISAS[name]


@relax.expr_functor.mutator
class _Materialize(relax.PyExprMutator):
    """Points the calls of portable kernels at the built ones, constants packed."""

    def __init__(self, mod: tvm.IRModule, built: dict) -> None:
        super().__init__(mod)
        self.built = built
        self.renamed = add_kernels(self.builder_, built, lambda entry: entry[1])
        self.calls = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        entry = portable_entry(call, self.built)
        if entry is None:
            return call
        recipe, _func, pack = entry
        args = list(call.args[1].fields)
        first = M.input_count(recipe)
        consts = args[first : first + M.constant_count(recipe)]
        packed = packed_constants("materialize-int8", call, consts, pack)
        new_args = [*args[:first], *packed, *args[first + len(consts) :]]
        self.calls += 1
        return relax.call_tir(self.renamed[call.args[0]], relax.Tuple(new_args), call.ty)
