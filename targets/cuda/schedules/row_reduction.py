"""Softmax and layer norm: each row reduced by one warp (short rows) or one thread block (long
rows), the reductions as warp shuffles, the output stored as vectors.

dlight's GeneralReduction gives every row a block of 256 threads: an attention row of 8 to 128
keys leaves most of them idle, and every reduction crosses 8 warps through shared memory and
`__syncthreads`. Here a row of up to WARP_ROW_MAX elements gets the lanes of one warp (fewer
for rows shorter than 32 vectors), several rows share a block (one per `threadIdx.y`), and each
reduction (max, sum, mean, variance) is a cross-thread reduction over the row's lanes into a
register (`local` scope), which TVM lowers to `__shfl_down_sync` steps and a `__shfl_sync`
broadcast: no shared memory, no barrier. Lanes read consecutive elements (coalesced); the
output block stores 16-byte vectors when the row length allows (4 lanes of the widest type it
computes in). Longer rows get a block of BLOCK_THREADS per row (shuffles within warps, shared
memory across them, as TVM lowers it).

Recognized by structure, never by names: after inlining, two or more reduction blocks over the
same rows and the same one innermost axis, then one spatial output block whose leading axes are
the rows. `softmax` when the first reduction is a max, `layer-norm` when every reduction is a
sum (mean, then variance); anything else is left to dlight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

WARP = 32
WARP_ROW_MAX = 1024  # rows up to this many elements: one warp (or fewer lanes) per row
ROW_BLOCK_THREADS = 128  # threads of a block holding several warp-rows
BLOCK_THREADS = 256  # longer rows: one block of this many threads per row
VECTOR_BYTES = 16


@dataclass
class RowKernel:
    """A kernel this rule schedules: its reductions in order, its output, the row shape."""

    sch: s_tir.Schedule
    reductions: list
    output: object
    rows: list[int]  # extents of the leading (row) axes
    length: int  # elements per row
    kind: str  # softmax | layer-norm


def _combiner(block: s_tir.SBlock) -> str:
    value = block.body.value if isinstance(block.body, tirx.BufferStore) else None
    return {tirx.Max: "max", tirx.Add: "sum"}.get(type(value), "other")


def _extents(block: s_tir.SBlock) -> list[int] | None:
    extents = [iv.dom.extent for iv in block.iter_vars]
    return [int(e) for e in extents] if all(isinstance(e, tirx.IntImm) for e in extents) else None


def _is_zero(expr) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr) == 0


def _reads_rows(output: s_tir.SBlock, stats: list, nrows: int) -> bool:
    """The output reads every row statistic at its own leading axes (rows aligned; unit axes,
    which normalization drops from the loops, are read at 0)."""
    row_vars = [iv.var for iv in output.iter_vars[:nrows]]
    for region in output.reads:
        if not any(region.source.same_as(s) for s in stats):
            continue
        mins = [r.min for r in region.region if not _is_zero(r.min)]
        if len(mins) != nrows or not all(m.same_as(v) for m, v in zip(mins, row_vars)):
            return False
    return True


def analyze(func: tirx.PrimFunc) -> RowKernel | None:
    """The kernel's rows and reductions after inlining, or None when it is not a softmax or
    layer norm of constant shape."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    infos = try_inline(sch, infos)
    *reductions, output = infos
    if len(reductions) < 2 or not all(i.is_reduction() for i in reductions):
        return None
    if not output.is_injective():
        return None
    blocks = [sch.get(i.block_rv) for i in infos]
    shapes = [_extents(b) for b in blocks]
    if any(s is None for s in shapes):
        return None
    row_shape = shapes[-1][:-1]
    if not row_shape or shapes[-1][-1] <= 1:
        return None
    for info, shape in zip(reductions, shapes):
        if info.dom_kind() != "S" * len(row_shape) + "R" or shape != shapes[-1]:
            return None
    stats = [w.source for b in blocks[:-1] for w in b.writes]
    if not _reads_rows(blocks[-1], stats, len(row_shape)):
        return None
    combiners = [_combiner(b) for b in blocks[:-1]]
    if combiners[0] == "max" and "sum" in combiners[1:]:
        kind = "softmax"
    elif all(c == "sum" for c in combiners):
        kind = "layer-norm"
    else:
        return None
    rvs = [i.block_rv for i in reductions]
    return RowKernel(sch, rvs, output.block_rv, row_shape, shapes[-1][-1], kind)


def _lanes(length: int, bits: int) -> int:
    """Threads per row: a block for long rows, else a warp, or fewer lanes for rows shorter
    than a warp's worth of vectors."""
    if length > WARP_ROW_MAX:
        return BLOCK_THREADS
    per_lane = max(1, VECTOR_BYTES * 8 // bits)
    lanes = 1
    while lanes < WARP and lanes * per_lane < length:
        lanes *= 2
    return lanes


def _vector(length: int, lanes: int, bits: int) -> int:
    """Vector width of the output stores: 16 bytes when it and the lanes divide the row."""
    vec = max(1, VECTOR_BYTES * 8 // bits)
    while vec > 1 and length % (lanes * vec):
        vec //= 2
    return vec


def _rows_per_block(rows: int, lanes: int) -> int:
    """Warp-rows per block: the most that fit ROW_BLOCK_THREADS threads and divide the row
    count (no predicate around the vectorized stores)."""
    most = max(1, ROW_BLOCK_THREADS // lanes) if lanes <= WARP else 1
    return max(d for d in range(1, min(most, rows) + 1) if rows % d == 0)


def schedule(kernel: RowKernel) -> s_tir.Schedule:
    """Rows over blocks (`blockIdx.x`) and warps (`threadIdx.y`), a row's elements over lanes
    (`threadIdx.x`); the reductions computed per row inside the output's row loop."""
    sch, output = kernel.sch, kernel.output
    # The widest type the output block touches sets the vector width: TVM's CUDA codegen
    # cannot build 8-lane fp32 vectors (an fp16 output computed from fp32 statistics).
    block = sch.get(output)
    bits = max(r.source.dtype.bits for r in (*block.reads, *block.writes))
    lanes = _lanes(kernel.length, bits)
    loops = sch.get_loops(output)
    rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    per_block = _rows_per_block(math.prod(kernel.rows), lanes)
    bx, row = sch.split(rows, [None, per_block])
    sch.bind(bx, "blockIdx.x")
    sch.bind(row, "threadIdx.y")
    vec = _vector(kernel.length, lanes, bits)
    _, tx, inner = sch.split(loops[-1], [None, lanes, vec])
    sch.bind(tx, "threadIdx.x")
    if vec > 1:
        sch.vectorize(inner)
    # Each statistic: a cross-thread reduction over the row's lanes into a register of every
    # lane (warp shuffles); lane t reads elements t, t + lanes, ... (coalesced).
    for reduction in reversed(kernel.reductions):
        sch.set_scope(reduction, 0, "local")
        sch.compute_at(reduction, row, preserve_unit_loops=True)
        serial, tx = sch.split(sch.get_loops(reduction)[-1], [None, lanes])
        sch.reorder(tx, serial)
        sch.bind(tx, "threadIdx.x")
    return sch


def schedule_rows(kind: str):
    """The rule for one kind (softmax or layer-norm): a schedule or None."""

    def apply(func: tirx.PrimFunc) -> s_tir.Schedule | None:
        kernel = analyze(func)
        if kernel is None or kernel.kind != kind:
            return None
        return schedule(kernel)

    return apply
