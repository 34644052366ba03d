"""Rule `elementwise`: functions of spatial blocks only.

Everything inlined into the last block (what cannot be stays separate), contiguous loops
fused, vectorized, parallel (symbolic extents: symbolic.py); pads become a zero fill plus an
unconditional copy.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules.common import (
    CpuInfo,
    is_pad,
    root_blocks,
    schedule_injective,
    schedule_pad,
    simple_structure,
)


def schedule_elementwise(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo) -> bool:
    views = root_blocks(sch)
    if not views or not all(v.is_spatial for v in views):
        return False
    if not simple_structure(sch, views):
        return False
    if not info.symbolic and any(None in v.extents() for v in views):
        return False  # run-time shapes outside a symbolic build: left as they are
    for v in views[:-1]:
        try:
            sch.compute_inline(v.rv)
        except Exception:  # noqa: BLE001 - a block read twice in odd ways stays separate
            pass
    for v in root_blocks(sch):
        if is_pad(v):
            schedule_pad(sch, v, info)  # a zero fill plus a copy without conditions
        else:
            schedule_injective(sch, v.rv, info)
    return True
