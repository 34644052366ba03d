"""Injective kernels (elementwise, broadcast, transpose, reshape, pad): one element vector per
thread, coalesced.

dlight's Fallback maps one scalar per thread over the fused loops. Here every producer is
inlined into the one output block, its innermost axis is split by a vector width that divides
it (16 bytes: 4 fp32 or 8 fp16 lanes), and the remaining loops are fused and spread over
blocks of 256 threads: neighbouring threads store neighbouring vectors, so stores (and the
loads of any operand with the same innermost axis) are 128-bit and coalesced.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

THREADS = 256
VECTOR_BYTES = 16


def _vector_lanes(inner: int, bits: int) -> int:
    lanes = max(1, VECTOR_BYTES * 8 // bits)
    while lanes > 1 and inner % lanes:
        lanes //= 2
    return lanes


def schedule_elementwise(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    """The schedule, or None when the function is not one injective output block of static
    shape after inlining."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos or not all(info.is_injective() for info in infos):
        return None
    infos = try_inline(sch, infos)
    if len(infos) != 1:
        return None
    block = infos[0].block_rv
    loops = sch.get_loops(block)
    extents = [sch.get(loop).extent for loop in loops]
    if not loops or not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    bits = sch.get(block).writes[0].source.dtype.bits
    lanes = _vector_lanes(int(extents[-1]), bits)
    inner = loops[-1]
    if lanes > 1:
        inner, vec = sch.split(loops[-1], [None, lanes])
    fused = sch.fuse(*loops[:-1], inner) if len(loops) > 1 or lanes > 1 else inner
    total = 1
    for e in extents:
        total *= int(e)
    threads = min(THREADS, max(32, total // lanes))
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    if lanes > 1:
        sch.vectorize(vec)
    return sch
