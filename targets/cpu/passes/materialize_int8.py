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

from graphopt.int8_ops import recipe_of
from graphopt.kernel_swap import materialize, packed_constants
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.int8 import materialize as M


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
        isa = K.resolve_isa(self.options.isa)
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
        new, changed = materialize(mod, built, _operands, stats, kernel_of=lambda e: e[1])
        return PassResult(new, changed, stats)


def _operands(call: relax.Call, entry) -> list:
    """The call's operands with the kernel's constants packed for it."""
    recipe, _func, pack = entry
    args = list(call.args[1].fields)
    first = M.input_count(recipe)
    consts = args[first : first + M.constant_count(recipe)]
    packed = packed_constants("materialize-int8", call, consts, pack)
    return [*args[:first], *packed, *args[first + len(consts) :]]
