"""Build the int4-weight matmuls of `lower-int4` for the CPU, constants repacked into panels.

`lower-int4` leaves portable kernels (scalar TIR, natural-layout nibbles) that carry their
spec (`graphopt.int4_ops`). This pass, in the CPU schedule stage, replaces each with the
W4 x fp32 panel kernel (`targets/cpu/int4/kernels.py`: nibbles unpacked in registers, FMAs),
or, for W4A8 ops, the int8-dot kernel of the target's scheme (`targets/cpu/int4/a8_kernels.py`:
vnni, avx2, sdot or generic, as `materialize-int8` picks it), and repacks each call's
constants at compile time, so the artifact stores the panel layout, still two weights a byte.
Kernels already built (layout not `natural`) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from graphopt.errors import PipelineError
from graphopt.int4_ops import spec_of
from graphopt.kernel_swap import materialize, packed_constants
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cpu.int4 import materialize as M
from graphopt.targets.cpu.int8.kernels import resolve_isa


@register_pass
class MaterializeInt4(GraphPass):
    """Portable int4-weight matmuls -> the CPU panel kernels, constants repacked for them."""

    name = "materialize-int4"

    @dataclass(frozen=True)
    class Options:
        # W4A8 dot-product scheme: auto (the current target's, else this host's) | vnni |
        # avx2 | sdot | generic (as materialize-int8's)
        isa: str = "auto"

    def run(self, mod: tvm.IRModule) -> PassResult:
        built, isa, a8 = {}, None, 0
        for gvar, func in mod.functions.items():
            spec = spec_of(func)
            if spec is not None and spec.layout == "natural":
                isa = isa or resolve_isa(self.options.isa)
                built[gvar] = M.build(spec, isa)
                a8 += spec.act == "int8"
        stats = {"kernels": len(built)}
        if a8:
            stats.update({"w4a8_kernels": a8, f"isa_{isa.name}": 1})
        new, changed = materialize(mod, built, _operands, stats)
        return PassResult(new, changed, stats)


def _operands(call: relax.Call, entry) -> list:
    """The activation and the kernel's constants repacked into panels."""
    x, *consts = list(call.args[1].fields)
    if len(consts) != M.CONSTANTS:
        raise PipelineError(
            f"materialize-int4: {call.args[0].name_hint} takes {len(consts)} constants, "
            f"not {M.CONSTANTS}"
        )
    return [x, *packed_constants("materialize-int4", call, consts, entry[1])]
