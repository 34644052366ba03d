"""CPU schedule for the fused attention kernel (`fuse`'s `graphopt.attention` group).

The group is recognized by its block structure (`graphopt.attention_match`: scores, max,
sum and output reductions, every other block spatial); anything else, or a group that also
returns its probabilities, makes `schedule_attention` return False (or raise while
scheduling) and the generic rules run.

The schedule works on a block of query rows at a time, so nothing row-sized leaves the cache:
every spatial block except K^T, the exp row, the probability row and the output is inlined;
the output's (batch, head, query row) loops (with a head merge, the heads are split off the
merged `heads * d` loop and moved outside the rows) are split into row blocks, fused and run
in parallel; the scores,
max, exp, sum, probabilities and output matmul are computed at that loop (their buffers
become per-thread rows). Both matmuls keep an `rows x (vectors of lanes)` register tile:
the reduction outside, the row block unrolled, the inner spatial axis (keys for the scores,
head dim for the output) vectorized. exp runs once per score and is vectorized; the row max
and row sum run in SIMD lanes (rfactor: `lanes` partials, then a short scalar reduction). K^T
stays a root block (parallel, vectorized) so the score tile reads it contiguously. The
function is run through StmtSimplify first (see `schedule`).
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV

from graphopt.attention_match import (
    AttentionBlocks,
    heads_outside_rows,
    loop_extent,
    match_attention,
    row_loops,
)
from graphopt.targets.cpu.schedules import common

# Row blocks bigger than this stop paying: the K^T / V rows are in L1 already.
MAX_ROW_BLOCK = 4
# SIMD registers of one tile row (scores: keys; output: head dim).
MAX_TILE_VECTORS = 4


# --------------------------------------------------------------------------------------------
# Schedule


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def _tile_vectors(extent: int, lanes: int) -> int:
    """Inner-axis width of a register tile: whole vectors dividing the extent, or all of it."""
    if extent % lanes:
        return extent if extent <= MAX_TILE_VECTORS * lanes else lanes
    return lanes * _largest_divisor(extent // lanes, MAX_TILE_VECTORS)


def _register_tile(sch: Schedule, rv, width: int) -> None:
    """Loops [.., i, j, k] -> [.., jo, k, i (unrolled), ji (vector)]; init vectorized too."""
    loops = sch.get_loops(rv)
    i, j, k = loops[-3], loops[-2], loops[-1]
    if loop_extent(sch, j) > width:
        jo, ji = sch.split(j, [None, width])
        sch.reorder(jo, k, i, ji)
    else:
        ji = j
        sch.reorder(k, i, ji)
    if loop_extent(sch, i) > 1:
        sch.unroll(i)
    sch.vectorize(ji)
    init = sch.decompose_reduction(rv, k)
    sch.vectorize(sch.get_loops(init)[-1])


def _vectorize_inner(sch: Schedule, rv, info: common.CpuInfo) -> None:
    loops = sch.get_loops(rv)
    extent = loop_extent(sch, loops[-1])
    if extent <= 1:
        return
    if extent > 8 * info.lanes and extent % info.lanes == 0:
        width = info.lanes * _largest_divisor(extent // info.lanes, 8)
        _, vec = sch.split(loops[-1], [None, width])
        sch.vectorize(vec)
    else:
        sch.vectorize(loops[-1])


def _rfactor_row(sch: Schedule, rv, info: common.CpuInfo) -> SBlockRV | None:
    """Row max / sum in SIMD lanes: `lanes` partial results (rfactor), then a short scalar
    reduction of them. Scalar, the two dependency chains over the keys cost about as much as
    the register-tiled matmuls. Rows the lanes do not divide stay scalar (None). At root:
    rfactor wants the block alone in its loop nest, so this comes before compute_at."""
    k = sch.get_loops(rv)[-1]
    if loop_extent(sch, k) % info.lanes or loop_extent(sch, k) <= info.lanes:
        return None
    _, ki = sch.split(k, [None, info.lanes])
    return sch.rfactor(ki, factor_axis=len(sch.get(rv).iter_vars) - 1)


def _vector_partials(sch: Schedule, partial: SBlockRV, outer) -> None:
    """The rfactor block under its row block: keys outside, lanes inside, vectorized.

    rfactor makes the lane iterator the block's first, so compute_at puts its loop outermost.
    """
    block = sch.get(partial)
    lane_var = block.body.indices[-1]  # the partial results' lane
    values = common.binding(sch, common.view_of(sch, partial))
    (lane_value,) = [v for iv, v in zip(block.iter_vars, values) if iv.var.same_as(lane_var)]
    (key_value,) = [
        v for iv, v in zip(block.iter_vars, values) if iv.iter_type == tirx.IterVar.CommReduce
    ]
    loops = list(sch.get_loops(partial))
    outer_for = sch.get(outer)
    inner = loops[[sch.get(lp).same_as(outer_for) for lp in loops].index(True) + 1 :]
    lane = [lp for lp in inner if sch.get(lp).loop_var.same_as(lane_value)]
    keys = [lp for lp in inner if sch.get(lp).loop_var.same_as(key_value)]
    if len(lane) != 1 or len(keys) != 1:
        raise ValueError("rfactor block not bound by plain loops")
    lane_for = sch.get(lane[0])
    sch.reorder(*[lp for lp in inner if not sch.get(lp).same_as(lane_for)], lane[0])
    sch.vectorize(lane[0])
    init = sch.decompose_reduction(partial, keys[0])
    sch.vectorize(sch.get_loops(init)[-1])


def _work(sch: Schedule, blocks: AttentionBlocks) -> int:
    """Multiply-adds of both matmuls (the softmax is small next to them)."""
    total = 0
    for mm in (blocks.scores, blocks.output):
        n = 1
        for e in mm.view.extents():
            n *= e or 1
        total += n
    return total


def schedule_attention(sch: Schedule, func: tirx.PrimFunc, info: common.CpuInfo) -> bool:
    """Schedule the fused attention kernel row block by row block; False if `func` is not one."""
    blocks = match_attention(sch, func)
    if blocks is None or blocks.extras:
        return False  # extra outputs: the row-block buffers below would not reach them
    keep = {
        v.name
        for v in (
            blocks.scores.view,
            blocks.max,
            blocks.exp,
            blocks.sum,
            blocks.probs,
            blocks.output.view,
            blocks.out,
            blocks.k_t,
        )
        if v is not None
    }
    for view in common.root_blocks(sch):
        if view.name not in keep:
            sch.compute_inline(view.rv)
    get = sch.get_sblock
    keys = loop_extent(sch, sch.get_loops(get(blocks.scores.view.name))[-2])
    head_dim = loop_extent(sch, sch.get_loops(get(blocks.output.view.name))[-2])
    nr_scores = _tile_vectors(keys, info.lanes)
    nr_output = _tile_vectors(head_dim, info.lanes)
    vectors = max(-(-nr_scores // info.lanes), -(-nr_output // info.lanes))

    partials = [_rfactor_row(sch, get(v.name), info) for v in (blocks.max, blocks.sum)]

    # Row blocks over the output's (batch.., row) loops, in parallel.
    out_rv = get(blocks.out.name)
    blocks.out = common.view_of(sch, out_rv)
    prefix = row_loops(sch, blocks)
    if blocks.out.name != blocks.output.view.name:
        prefix = heads_outside_rows(sch, out_rv, prefix, head_dim)
    # The row block splits the innermost row loop (a block never straddles a batch or head:
    # compute_at could not bound that region), then the loops outside it are fused.
    rb_max = min(MAX_ROW_BLOCK, max(1, info.accumulators // vectors))
    rb = _largest_divisor(loop_extent(sch, prefix[-1]), rb_max)
    row_outer, _ = sch.split(prefix[-1], [None, rb])
    outer = sch.fuse(*prefix[:-1], row_outer) if len(prefix) > 1 else row_outer
    if _work(sch, blocks) >= common.MIN_PARALLEL_WORK:
        sch.parallel(outer)

    chain = [blocks.probs, blocks.sum, partials[1], blocks.exp, blocks.max, partials[0]]
    chain = [v for v in chain if v is not None] + [blocks.scores.view]
    if blocks.out.name != blocks.output.view.name:
        chain.insert(0, blocks.output.view)
        _vectorize_inner(sch, out_rv, info)
    for view in chain:
        rv = view if isinstance(view, SBlockRV) else get(view.name)
        sch.compute_at(rv, outer, preserve_unit_loops=True)
    for partial in partials:
        if partial is not None:
            _vector_partials(sch, partial, outer)

    _register_tile(sch, get(blocks.scores.view.name), nr_scores)
    _register_tile(sch, get(blocks.output.view.name), nr_output)
    _vectorize_inner(sch, get(blocks.exp.name), info)
    _vectorize_inner(sch, get(blocks.probs.name), info)
    if blocks.k_t is not None:
        common.schedule_injective(sch, get(blocks.k_t.name), info)
    return True
