"""Injective kernels (elementwise, broadcast, transpose, reshape, pad): one element vector per
thread, coalesced.

dlight's Fallback maps one scalar per thread over the fused loops. Here every producer is
inlined into the one output block, its innermost axis is split by a vector width that divides
it (16 bytes: 4 fp32 or 8 fp16 lanes; 16-bit gathers such as transposes stay scalar), and the
remaining loops are fused and spread over blocks of 256 threads: neighbouring threads store
neighbouring vectors, so stores (and the loads of any operand with the same innermost axis)
are 128-bit and coalesced.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

from graphopt.targets.cpu.schedules.common import buffer_loads, walk

THREADS = 256
VECTOR_BYTES = 16


def _vector_lanes(inner: int, bits: int) -> int:
    lanes = max(1, VECTOR_BYTES * 8 // bits)
    while lanes > 1 and inner % lanes:
        lanes //= 2
    return lanes


def _contiguous(block) -> bool:
    """Every load either indexes only its last axis by the store's innermost index, or does
    not depend on it (a broadcast)."""
    store = block.body
    if not isinstance(store, tirx.BufferStore) or not store.indices:
        return False
    last = store.indices[-1]
    if not isinstance(last, tirx.Var):
        return False
    for load in buffer_loads(store.value):
        indices = list(load.indices)
        uses = [any(v.same_as(last) for v in tirx.analysis.undefined_vars(i)) for i in indices]
        if not any(uses):
            continue  # broadcast along the innermost axis
        if not (indices[-1].same_as(last) and not any(uses[:-1])):
            return False
    return True


def _widest_bits(block) -> int:
    """The widest value type the block stores, loads or casts to: a quantize (fp32 -> int8)
    or an int8 add (int32 inside) vectorizes by its 32-bit values (16 int8 lanes would make
    float32x16 / int32x16 values, which TVM's CUDA codegen has no type for)."""
    store = block.body
    widths = [block.writes[0].source.dtype.bits]

    def visit(expr) -> None:
        if isinstance(expr, (tvm.ir.TensorLoad, tirx.Cast)):
            widths.append(expr.ty.dtype.bits)

    if isinstance(store, tirx.BufferStore):
        walk(store.value, visit)
    return max(widths)


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
    stmt = sch.get(block)
    bits = stmt.writes[0].source.dtype.bits
    # TVM's CUDA codegen packs a gather of 16-bit lanes wrongly (make_uint4 of 8 halves), so
    # narrow types vectorize only when every load is contiguous too; fp32 gathers are fine.
    lanes = _vector_lanes(int(extents[-1]), bits) if bits >= 32 or _contiguous(stmt) else 1
    if bits == 8:  # int8 outputs of 32-bit values (quantize, int8 add): 4 lanes of them
        while lanes > 1 and lanes * _widest_bits(stmt) > VECTOR_BYTES * 8:
            lanes //= 2
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
