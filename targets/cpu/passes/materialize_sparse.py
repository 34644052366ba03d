"""Build `sparsify`'s block-sparse ops for the CPU being compiled for.

`sparsify` leaves portable scalar kernels that carry their recipe (`graphopt.sparse_ops`);
this pass, in the CPU schedule stage, replaces each by the vectorized kernel for the target's
SIMD width and registers (`targets/cpu/sparse/kernels.py`). The operands (x and the BSR
constants) are the same, so the calls are untouched. The kernels are marked scheduled:
`schedule-cpu` leaves them alone.
"""

from __future__ import annotations

import dataclasses

import tvm

from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.sparse_ops import spec_of
from graphopt.targets.cpu.schedules.common import cpu_info
from graphopt.targets.cpu.sparse.kernels import bsr_kernel
from graphopt.targets.cpu.sparse.nchw import bsr_nchw_kernel
from graphopt.targets.cpu.sparse.rules import current_target


@register_pass
class MaterializeSparse(GraphPass):
    """Portable block-sparse kernels -> vectorized CPU kernels (same operands)."""

    name = "materialize-sparse"

    def run(self, mod: tvm.IRModule) -> PassResult:
        info = cpu_info(current_target())
        stats = {"kernels": 0, "already_built": 0}
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        for gvar, func in mod.functions.items():
            spec = spec_of(func)
            if spec is None or info is None:
                continue
            if spec.isa is not None:
                stats["already_built"] += 1
                continue
            built = dataclasses.replace(spec, isa=f"simd{info.lanes}")
            new[gvar] = (bsr_nchw_kernel if spec.nchw else bsr_kernel)(built, info)
            stats["kernels"] += 1
        return PassResult(new if stats["kernels"] else mod, stats["kernels"] > 0, stats)
