"""Row-wise kernels (softmax, layer norm): reductions over the last axis in SIMD lanes.

Each row is computed whole by one thread, every step in SIMD vectors:

    for rows in parallel:                     (the leading loops, merged across blocks)
        max:  `lanes` partial maxima over whole vectors, the last partial vector peeled off
              (LoopPartition), then a short scalar reduction of the partials (rfactor)
        exp:  vectorized with the tail peeled, into a row buffer
        sum:  like max
        out:  vectorized with the tail peeled

A scalar max and sum (one dependency chain over the keys, as dlight's CPU Reduction
schedules them) cost 3x this at 384 keys; with the exp recomputed inside the sum, 6x. The
last axis may be static or symbolic (the attention's softmax over a sequence of any length).

The schedule is built at root, one loop nest per block (rfactor, decompose_reduction and
vectorize need a nest of their own when the row length is symbolic: the split's guard makes
the bindings only partially affine), then the nests' row loops are merged level by level.
`Schedule.parallel` refuses the merged loop (its dataflow check does not see through the
decomposed partial sums), so the outermost merged row loop with more than one iteration is
made parallel on the scheduled function instead, after checking that every block in it
writes only its own rows (`_rows_lead_writes`): the iterations are then independent.
"""

from __future__ import annotations

import tvm_ffi
from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules import common


def schedule_rows(
    func: tirx.PrimFunc, info: common.CpuInfo, parallel: bool = True
) -> Schedule | None:
    """The schedule above, or None where `func` is not a row kernel with rows of at least
    two SIMD vectors; `parallel=False` keeps the rows on one thread (small kernels)."""
    sch = Schedule(func)
    _inline_single_use(sch)
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    loops = sch.get_loops(blocks[-1])
    length = common.const_int(sch.get(loops[-1]).extent)
    if len(loops) < 2 or (length is not None and length < 2 * info.lanes):
        return None
    nrow = len(loops) - 1
    extents = [common.const_int(sch.get(lp).extent) for lp in loops[:nrow]]
    if any(len(sch.get_loops(b)) != nrow + 1 for b in blocks):
        return None
    if not all(_rows_lead_writes(sch, b, nrow) for b in blocks):
        return None
    for block in blocks:
        _vectorize_row_step(sch, block, nrow, info.lanes)
    names = [sch.get(b).name_hint for b in _nest_blocks(sch, root)]
    for level in range(nrow):
        _merge_level(sch, names, level)
    if not parallel:
        return Schedule(sch.mod["main"])
    level = next((i for i, e in enumerate(extents) if e != 1), 0)
    row_var = sch.get(sch.get_loops(sch.get_sblock(names[-1]))[level]).loop_var
    return Schedule(_parallel_loop(sch.mod["main"], row_var))


def _inline_single_use(sch: Schedule) -> None:
    """Elementwise steps into their one reader (softmax's x - max). A step read by two blocks
    (the exp, read by the sum and the output) stays, so it runs once per element; a per-row
    step (fewer loops than the output: layer norm's mean = sum / n) is inlined into all its
    readers, where it is loop-invariant."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    depth = len(sch.get_loops(blocks[-1]))
    for block in blocks[:-1]:
        per_row = len(sch.get_loops(block)) < depth
        if len(sch.get_consumers(block)) != 1 and not per_row:
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a reduction, or not inlinable: stays a step
            pass


def _rows_lead_writes(sch: Schedule, block, nrow: int) -> bool:
    """Whether the block's one write is indexed by its first `nrow` loops, in order, as its
    first indices (so iterations of those loops write disjoint elements)."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return False
    loops = [sch.get(lp) for lp in sch.get_loops(block)[:nrow]]
    values = common.binding(sch, common.view_of(sch, block))
    binding = {iv.var: v for iv, v in zip(stmt.iter_vars, values)}
    region = stmt.writes[0].region
    if len(region) < nrow:
        return False
    for rng, loop in zip(region[:nrow], loops):
        if common.const_int(loop.extent) == 1:
            continue  # one iteration: nothing to keep apart
        value = binding.get(rng.min) if isinstance(rng.min, tirx.Var) else None
        if value is None or not value.same_as(loop.loop_var) or common.const_int(rng.extent) != 1:
            return False
    return True


def _vectorize_row_step(sch: Schedule, block, nrow: int, lanes: int) -> None:
    view = common.view_of(sch, block)
    if view.is_spatial:
        _vectorize_with_tail(sch, sch.get_loops(block)[-1], lanes)
        return
    if not (view.kinds.endswith("R") and view.kinds.count("R") == 1):
        return
    sch.split(sch.get_loops(block)[-1], [None, lanes])
    partial = sch.rfactor(sch.get_loops(block)[-1], factor_axis=nrow)
    inner = sch.get_loops(partial)[nrow:]
    keys, lane = _keys_and_lane(sch, inner, partial)
    sch.annotate(keys, "pragma_loop_partition_hint", 1)
    sch.vectorize(lane)
    init = sch.decompose_reduction(partial, keys)
    sch.vectorize(sch.get_loops(init)[-1])


def _keys_and_lane(sch: Schedule, loops: list, partial) -> tuple:
    """The partial block's key-vector loop and lane loop (rfactor makes the lane its first
    iterator, bound to the loop that was the split's inner one)."""
    block = sch.get(partial)
    values = common.binding(sch, common.view_of(sch, partial))
    lane_var = block.body.indices[-1]  # the partial results' lane
    lane_value = next(v for iv, v in zip(block.iter_vars, values) if iv.var.same_as(lane_var))
    (lane,) = [lp for lp in loops if sch.get(lp).loop_var.same_as(lane_value)]
    (keys,) = [lp for lp in loops if not sch.get(lp).same_as(sch.get(lane))]
    return keys, lane


def _vectorize_with_tail(sch: Schedule, loop, lanes: int) -> None:
    """Whole vectors over a symbolic loop and a scalar tail: the split's guard goes to
    LoopPartition (the hint), which peels the last partial vector off the main loop. A
    static loop is split exactly by the widest vector dividing it, no guard: partitioning
    a static 28 (8-lane vectors) in a kernel with a symbolic batch made TVM 0.27's
    lowering fail (int32 against int64 in the partition's condition)."""
    extent = common.const_int(sch.get(loop).extent)
    if extent is not None:
        width = common.vector_width(extent, lanes)
        if width > 1:
            sch.vectorize(sch.split(loop, [None, width])[1] if extent > width else loop)
        return
    outer, inner = sch.split(loop, [None, lanes])
    sch.annotate(outer, "pragma_loop_partition_hint", 1)
    sch.vectorize(inner)


def _nest_blocks(sch: Schedule, root) -> list:
    """Every block of the root's nests (the decomposed inits share their update's nest)."""
    found, names = [], set()
    for top in sch.get_child_blocks(root):
        for block in [top, *sch.get_child_blocks(sch.get_loops(top)[0])]:
            name = sch.get(block).name_hint
            if name not in names:
                names.add(name)
                found.append(block)
    return found


def _merge_level(sch: Schedule, names: list[str], level: int) -> None:
    loops: list = []
    for name in names:
        loop = sch.get_loops(sch.get_sblock(name))[level]
        if not any(sch.get(loop).same_as(sch.get(seen)) for seen in loops):
            loops.append(loop)
    if len(loops) > 1:
        sch.merge(*loops)


def _parallel_loop(func: tirx.PrimFunc, loop_var: tirx.Var) -> tirx.PrimFunc:
    def mark(loop: tirx.For) -> tirx.For:
        if not loop.loop_var.same_as(loop_var):
            return loop
        return tirx.For(
            loop.loop_var,
            loop.min,
            loop.extent,
            tirx.ForKind.PARALLEL,
            loop.body,
            loop.thread_binding,
            loop.annotations,
        )

    return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.For, mark)]))
