"""The fused attention kernel (`fuse`'s `graphopt.attention` group) as one GPU kernel.

Without it attention is three kernels (QK^T with the mask, softmax, PV) and every head's
scores go through global memory twice. Here one thread block takes `rows` query rows of one
(batch, head), one row per warp (`threadIdx.y`), and keeps everything row-sized on chip:

- K^T and V of the (batch, head) are copied once into shared memory by the whole block (the
  head split transposes inlined into the copies, so they read the projections in place);
- the scores of a row live in registers: lane t computes keys t, t + lanes, ... (QK^T with the
  scale and the mask inlined), `keys / lanes` values per lane;
- the row max and the row sum are cross-thread reductions over the lanes, which TVM lowers to
  warp shuffles; exp is recomputed where it is read (sum, probabilities);
- the probabilities of the row go to shared memory (in the dtype the PV matmul reads: fp16 or
  bf16 where the graph rounds them, fp32 otherwise), then lanes over the head dimension compute
  P.V from it and from the V tile, accumulating in a register (fp32: the matmul's own
  accumulator dtype);
- the head merge (transpose, reshape) and any cast are inlined into the output store.

A group that also returns its probabilities writes them from the same kernel (from their shared
copy, or from the row's lanes where the graph casts them for P.V). Recognized by block
structure (`graphopt.attention_match`). Tiles that do not fit the shared-memory budget stay in
global memory (V first, then K^T: the rows of a block read them through the caches). Returns
None for symbolic lengths and rows of more than MAX_KEYS keys (the next rules would take the
group: dlight's Fallback, one slow kernel); the CUDA target's `fuse` does not make such groups
(`attention_max_keys`), so they stay three kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from graphopt import tir_blocks as tb
from graphopt.attention_match import (
    AttentionBlocks,
    match_attention,
)

WARP = 32
MAX_KEYS = 1024  # keys / 32 scores per lane in registers
SHARED_BYTES = 48 * 1024  # the static shared memory of one block on every arch
BLOCK_THREADS = 256  # rows per block: up to this many threads


@dataclass(frozen=True)
class Plan:
    keys: int
    head_dim: int
    lanes: int  # threads per row (a warp, or fewer for short rows and heads)
    rows: int  # query rows per block, one per `threadIdx.y`
    k_shared: bool  # K^T tile in shared memory (else read from global memory, cached)
    v_shared: bool  # V tile in shared memory


def _bytes(load) -> int:
    return load.ty.dtype.bits // 8


def shared_bytes(blocks: AttentionBlocks, p: Plan) -> int:
    """The K^T tile (rows padded by one), the V tile, one probability row per warp."""
    k = (p.keys + 1) * p.head_dim * _bytes(blocks.scores.b) if p.k_shared else 0
    v = p.keys * p.head_dim * _bytes(blocks.output.b) if p.v_shared else 0
    return k + v + p.rows * p.keys * _bytes(blocks.output.a)


def plans(blocks: AttentionBlocks) -> list[Plan]:
    """Lanes, rows per block and tiles in shared memory, best first: both tiles, K^T alone,
    neither, each with the most rows whose estimate fits (an estimate: inlining may change a
    tile's dtype, so the schedule measures what it allocates). Empty for shapes the kernel
    does not take."""
    scores, output = blocks.scores.view.extents(), blocks.output.view.extents()
    if any(e is None for e in (*scores, *output)):
        return []  # symbolic lengths
    queries, keys = scores[-3], scores[-2]
    head_dim = output[-2]
    if keys > MAX_KEYS or output[-1] != keys:
        return []
    lanes = 1
    while lanes < WARP and lanes < max(keys, head_dim):
        lanes *= 2
    most = BLOCK_THREADS // lanes
    rows = [d for d in range(min(most, queries), 0, -1) if queries % d == 0]
    found = []
    for tiles in ((True, True), (True, False), (False, False)):
        fits = [Plan(keys, head_dim, lanes, r, *tiles) for r in rows]
        fits = [p for p in fits if shared_bytes(blocks, p) <= SHARED_BYTES]
        found += fits[:1]
    return found


def _read_index(block: s_tir.SBlock, buf) -> int:
    return [r.source.same_as(buf) for r in block.reads].index(True)


def _stage(sch: s_tir.Schedule, blocks: AttentionBlocks, p: Plan) -> list:
    """A shared copy of K^T (the head split transposes inlined into it: it reads the
    projection in place, lanes then read consecutive keys), the probabilities in shared
    memory (through a shared cache and a write-back when they are also an output), every
    other producer inlined; a P.V block that is the output accumulates in a register and
    stores once. Returns the copies."""
    get = sch.get_sblock
    scores = blocks.scores
    copies = []
    if p.k_shared:
        k_index = _read_index(scores.view.block, scores.b.source)
        copies.append(sch.cache_read(get(scores.view.name), k_index, "shared"))
    keep = {sch.get(rv).name_hint for rv in copies} | {
        blocks.scores.view.name, blocks.max.name, blocks.sum.name, blocks.probs.name,
        blocks.output.view.name, blocks.out.name, *(v.name for v in blocks.extras),
    }  # fmt: skip
    if blocks.probs.name in {v.name for v in blocks.extras}:
        o_block = get(blocks.output.view.name)
        back = sch.cache_write(get(blocks.probs.name), 0, "shared", consumer_blocks=[o_block])
        keep.add(sch.get(back).name_hint)
    else:
        sch.set_scope(get(blocks.probs.name), 0, "shared")
    if blocks.out.name == blocks.output.view.name:
        keep.add(sch.get(sch.cache_write(get(blocks.out.name), 0, "local")).name_hint)
    for view in tb.root_blocks(sch):
        if view.name not in keep:
            sch.compute_inline(view.rv)
    return copies


def _over_lanes(sch: s_tir.Schedule, loop, lanes: int, reduction: bool = False) -> None:
    """Element t, t + lanes, ... of a row to lane t (`threadIdx.x`); a lane's elements
    unrolled (at most MAX_KEYS / 32), so that its scores and accumulators are registers (nvcc
    keeps an array in registers only where every index is a constant)."""
    serial, lane = sch.split(loop, [None, lanes])
    if reduction:
        sch.reorder(lane, serial)
    sch.bind(lane, "threadIdx.x")
    sch.unroll(serial)


def _rows(sch: s_tir.Schedule, blocks: AttentionBlocks, p: Plan):
    """The scores' (batch, head, row blocks) over thread blocks, rows over warps, keys over
    lanes, in registers. Returns the thread-block loop and the row loop."""
    scores = sch.get_sblock(blocks.scores.view.name)
    *prefix, keys, _ = sch.get_loops(scores)
    outer, row = sch.split(prefix[-1], [None, p.rows])
    bx = sch.fuse(*prefix[:-1], outer) if len(prefix) > 1 else outer
    sch.bind(bx, "blockIdx.x")
    sch.bind(row, "threadIdx.y")
    sch.set_scope(scores, 0, "local")
    _over_lanes(sch, keys, p.lanes, reduction=True)
    *_, serial, k = sch.get_loops(scores)
    sch.reorder(k, serial)  # Q[i, k] loaded once per k for all of a lane's keys
    return bx, row


def _per_row(sch: s_tir.Schedule, blocks: AttentionBlocks, row, p: Plan, copies) -> None:
    """Every later block at the row loop, in data-flow order, with keys over the lanes (max,
    sum, probabilities, extra outputs) or the head dim (P.V, the output store); max, sum and
    the P.V accumulator in registers."""
    get = sch.get_sblock
    skip = {blocks.scores.view.name} | {sch.get(rv).name_hint for rv in copies}
    names = [v.name for v in tb.root_blocks(sch) if v.name not in skip]
    for name in names:
        sch.reverse_compute_at(get(name), row, preserve_unit_loops=True)
    o_name = blocks.output.view.name
    for name in names:
        loops = sch.get_loops(get(name))
        if name in (blocks.max.name, blocks.sum.name):
            sch.set_scope(get(name), 0, "local")
            _over_lanes(sch, loops[-1], p.lanes, reduction=True)
        elif name == o_name:
            _over_lanes(sch, loops[-2], p.lanes)
            if blocks.out.name != o_name:
                sch.set_scope(get(name), 0, "local")
        else:
            _over_lanes(sch, loops[-1], p.lanes)


def _cooperative(sch: s_tir.Schedule, copy, at, p: Plan, transposed: bool = False) -> None:
    """A tile copy at the thread-block loop, spread over all threads of the block. K^T
    (`transposed`): consecutive threads on the head dim, which is contiguous in the
    projection it reads, and rows padded by one element so that those threads write to
    different shared-memory banks."""
    sch.compute_at(copy, at, preserve_unit_loops=True)
    loops = list(sch.get_loops(copy))
    at_for = sch.get(at)
    inner = loops[[sch.get(lp).same_as(at_for) for lp in loops].index(True) + 1 :]
    if transposed and len(inner) >= 2:
        sch.reorder(inner[-1], inner[-2])
        inner[-2:] = inner[-2:][::-1]
        sch.storage_align(copy, 0, axis=len(inner) - 2, factor=32, offset=1)
    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    _, ty, tx = sch.split(fused, [None, p.rows, p.lanes])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def _v_read(sch: s_tir.Schedule, blocks: AttentionBlocks, o_rv) -> int | None:
    """Which read of the P.V block is V (its producers inlined: the projection, or V itself);
    None when it is not one tensor (V then stays in global memory)."""
    p_buf = sch.get(sch.get_sblock(blocks.probs.name)).writes[0].source
    reads = sch.get(o_rv).reads
    found = [i for i, r in enumerate(reads) if not r.source.same_as(p_buf) and len(r.region) > 1]
    return found[0] if len(found) == 1 else None


_COMPACT = [
    s_tir.transform.LowerInitBlock(),
    s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
    s_tir.transform.ConvertBlocksToOpaque(),
    s_tir.transform.CompactBufferAllocation(),
]


def shared_allocated(func: tirx.PrimFunc) -> int:
    """Bytes of shared memory the scheduled kernel allocates, after buffer compaction (what
    lowering does: a tile copy allocates the region one thread block reads)."""
    compact = tvm.transform.Sequential(_COMPACT)(tvm.IRModule({"main": func}))["main"]
    total: list[int] = []

    def visit(block: s_tir.SBlock) -> s_tir.SBlock:
        for buf in block.alloc_buffers:
            if buf.scope().startswith("shared"):
                n = buf.dtype.bits // 8
                for d in buf.shape:
                    n *= int(d) if isinstance(d, tirx.IntImm) else 1 << 30
                total.append(n)
        return block

    tvm_ffi.structural_map(compact.body, [(s_tir.SBlock, visit)])
    return sum(total)


def _schedule(func: tirx.PrimFunc, p: Plan) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    blocks = match_attention(sch, func)
    copies = _stage(sch, blocks, p)
    bx, row = _rows(sch, blocks, p)
    _per_row(sch, blocks, row, p, copies)
    for copy in copies:
        _cooperative(sch, copy, bx, p, transposed=True)
    # V after the output matmul moved: a copy at the root would be a producer outside the row.
    o_rv = sch.get_sblock(blocks.output.view.name)
    v_index = _v_read(sch, blocks, o_rv) if p.v_shared else None
    if v_index is not None:
        _cooperative(sch, sch.cache_read(o_rv, v_index, "shared"), bx, p)
    return sch


def schedule_attention(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    """One kernel for the fused attention group, or None when `func` is not one this rule
    takes: the first plan whose kernel allocates at most SHARED_BYTES of shared memory."""
    # The head split / merge reshapes index `((d // 64 + i) // 128 + b) % 2` (= b) and the like:
    # simplified, buffer compaction bounds a row's and a head's regions (else a tile or the
    # P.V accumulator takes the whole tensor).
    func = s_tir.transform.StmtSimplify()(tvm.IRModule({"main": func}))["main"]
    blocks = match_attention(s_tir.Schedule(func), func)
    if blocks is None:
        return None
    for p in plans(blocks):
        sch = _schedule(func, p)
        if shared_allocated(sch.mod["main"]) <= SHARED_BYTES:
            return sch
    return None
