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

from graphopt.kernel_swap import materialize, packed_constants
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_ops import spec_of
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
        stats = {"kernels": len(built)}
        new, changed = materialize(mod, built, _operands, stats)
        return PassResult(new, changed, stats)


def _operands(call: relax.Call, entry) -> list:
    """The activation and the weight repacked into 16-bit panels."""
    x, w = list(call.args[1].fields)
    return [x, *packed_constants("materialize-precision", call, [w], entry[1])]
