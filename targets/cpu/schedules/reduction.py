"""Rule `reduction`: softmax, layer norm, mean and other reductions.

Row kernels (reductions over the last axis, rows of two SIMD vectors or more) get rows.py's
schedule: reductions in SIMD lanes, the attention softmax at 384 keys 2.6x faster than
`s_tir.dlight.cpu.Reduction`'s scalar ones. Other reductions get dlight's when it applies,
else the leading spatial loops made parallel. Small kernels stay on one thread, row kernels
among them still in SIMD lanes (MiniLM's layer norms, 128 x 384: 86 -> 13 us).
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules import rows
from graphopt.targets.cpu.schedules.common import (
    MIN_PARALLEL_ELEMS,
    CpuInfo,
    const_int,
    product,
    root_blocks,
    schedule_injective,
    simple_structure,
)


def schedule_reduction(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo, target) -> bool:
    views = root_blocks(sch)
    if not any(not v.is_spatial for v in views):
        return False
    from tvm.s_tir.dlight.cpu import Reduction

    work = max(product(v.extents()) for v in views)
    small = work < MIN_PARALLEL_ELEMS  # too small to pay for waking the thread pool
    try:
        vectorized = rows.schedule_rows(func, info, parallel=not small)
    except Exception:  # noqa: BLE001 - not a row kernel it can schedule: dlight's
        vectorized = None
    if vectorized is not None:
        return vectorized
    if small:  # dlight always goes parallel
        return _schedule_outer_parallel(sch, info, parallel=False)
    try:
        dl = Reduction().apply(func, target, False)
    except Exception:  # noqa: BLE001 - dlight raises on patterns it half-matches
        dl = None
    if isinstance(dl, Schedule):
        return dl
    return _schedule_outer_parallel(sch, info)


def _schedule_outer_parallel(sch: Schedule, info: CpuInfo, parallel: bool = True) -> bool:
    """Last resort for reductions: inline what can be, parallel over leading spatial loops."""
    views = root_blocks(sch)
    if not simple_structure(sch, views):
        return False
    changed = False
    for v in views[:-1]:
        if v.is_spatial:
            try:
                sch.compute_inline(v.rv)
                changed = True
            except Exception:  # noqa: BLE001 - keep blocks that cannot be inlined
                pass
    for v in root_blocks(sch):
        lead = []
        for lp, kind in zip(v.loops, v.kinds):
            if kind != "S":
                break
            lead.append(lp)
        if v.is_spatial:
            schedule_injective(sch, v.rv, info, parallel=parallel)
            changed = True
            continue
        if not lead or not parallel:
            continue
        total = 1
        for lp in lead:
            total *= const_int(sch.get(lp).extent) or 1
        if total >= 2:
            fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
            sch.parallel(fused)
            changed = True
    return changed
