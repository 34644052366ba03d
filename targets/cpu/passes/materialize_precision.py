"""Build the 16-bit matmuls of `lower-precision` for the CPU, weights repacked for the kernel.

`lower-precision` leaves portable kernels (scalar TIR, natural [K, N] bits) that carry their
spec (`graphopt.precision_ops`). This pass, in the CPU schedule stage, replaces each with the
kernel of the target being compiled for and repacks the constants at compile time, still 16
bits a weight: bf16 on an x86 CPU with AVX512_BF16 runs `vdpbf16ps` on pair-interleaved
weights (`targets/cpu/precision/dpbf16.py`); everything else runs the panel kernel every CPU
has (`targets/cpu/precision/kernels.py`: 16-bit weights widened in registers, fp32 FMAs). The
compile report says which (`graphopt.precision_ops.kernel_note`; docs/PRECISION.md).
The 16-bit depthwise convs (`graphopt.precision_depthwise`) become the vectorized kernel of
`targets/cpu/precision/depthwise.py` (vectors of channels as wide as the target's SIMD
registers; weights as they are).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from graphopt.kernel_swap import materialize, packed_constants
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_depthwise import spec_of as depthwise_spec_of
from graphopt.precision_ops import spec_of
from graphopt.targets.cpu.precision import materialize as M


@register_pass
class MaterializePrecision(GraphPass):
    """Portable 16-bit matmuls -> the target's CPU kernels (vdpbf16ps, else fp32 FMAs)."""

    name = "materialize-precision"

    @dataclass(frozen=True)
    class Options:
        # Kernel: auto (vdpbf16ps for bf16 where the current target, else this host, has
        # AVX512_BF16; else fma) | fma (16-bit weights, fp32 FMAs) | dpbf16.
        kernel: str = "auto"

    def run(self, mod: tvm.IRModule) -> PassResult:
        built, stats = {}, {"kernels": 0}
        for gvar, func in mod.functions.items():
            spec = spec_of(func)
            if spec is not None and spec.layout == "natural":
                kernel = M.resolve_kernel(self.options.kernel, spec.precision)
                built[gvar] = M.build(spec, kernel)
                stats[f"kernel_{kernel}"] = stats.get(f"kernel_{kernel}", 0) + 1
            dw = depthwise_spec_of(func)
            if dw is not None and dw.layout == "natural":
                built[gvar] = M.build_depthwise(dw)
                stats["depthwise"] = stats.get("depthwise", 0) + 1
        stats["kernels"] = len(built)
        new, changed = materialize(mod, built, _operands, stats)
        return PassResult(new, changed, stats)


def _operands(call: relax.Call, entry) -> list:
    """The activation, the weight repacked for the kernel, then the epilogue's operands."""
    x, w, *epilogue = list(call.args[1].fields)
    return [x, *packed_constants("materialize-precision", call, [w], entry[1]), *epilogue]
