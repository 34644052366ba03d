"""Sliding-window reductions with few taps (depthwise convs, pooling): one output per thread,
the taps unrolled into a register accumulator.

dlight gives such a kernel to GeneralReduction, which spends a thread block on each output
and reduces 9 taps across its threads. A depthwise conv has a handful of multiply-adds per
output and is memory bound: one thread per output, consecutive threads on consecutive output
columns (coalesced loads of the input row), padding and the epilogue (bias, clip) inlined.

Recognized by structure: exactly one reduction block, whose reduction extent is at most
MAX_TAPS and whose input index combines an output axis with a reduction axis (`h * s + kh`);
a matmul (indices are plain axes) never matches.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

MAX_TAPS = 64
THREADS = 128


def _vars(expr) -> set:
    return set(tirx.analysis.undefined_vars(expr))


def is_window(block: s_tir.SBlock) -> bool:
    """Some read index mixes a spatial and a reduction axis, and the taps are few."""
    spatial = {iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar}
    reduce = {iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    taps = 1
    for iv in block.iter_vars:
        if iv.iter_type == tirx.IterVar.CommReduce:
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return False
            taps *= int(iv.dom.extent)
    if not reduce or taps > MAX_TAPS:
        return False
    for region in block.reads:
        for rng in region.region:
            used = _vars(rng.min)
            if used & spatial and used & reduce:
                return True
    return False


def schedule_window(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    infos = try_inline(sch, infos)
    reductions = [i for i in infos if i.is_reduction()]
    if len(reductions) != 1 or not is_window(sch.get(reductions[0].block_rv)):
        return None
    main = reductions[0].block_rv
    at = [i is reductions[0] for i in infos].index(True)
    epilogue = [i.block_rv for i in infos[at + 1 :]]
    if len(epilogue) > 1:
        return None
    for info in infos[:at]:  # producers (padding) into the taps' loads
        sch.compute_inline(info.block_rv)
    kinds = reductions[0].dom_kind()
    loops = sch.get_loops(main)
    spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
    taps = [lp for lp, k in zip(loops, kinds) if k == "R"]
    sch.reorder(*spatial, *taps)
    bx, tx = sch.split(sch.fuse(*spatial), [None, THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    if epilogue:  # bias, clip, cast: per thread, reading the accumulator from a register
        sch.reverse_compute_at(epilogue[0], tx)
        sch.set_scope(main, 0, "local")
    else:
        sch.reverse_compute_at(sch.cache_write(main, 0, "local"), tx)
    sch.decompose_reduction(main, taps[0])
    for loop in taps:
        sch.unroll(loop)
    return sch
