"""Scheduling loops whose extent is symbolic (`--input-shape input_ids=1,1..512`).

A symbolic dim is a row dimension of the kernels (tokens, batch): the static dims (hidden
size, channels) stay innermost, so they keep their vector width and tile sizes, and the
symbolic loops become the outer, parallel ones. Where a decision needs the size of a symbolic
dim (is the work worth threads? pack B?) the rules use NOMINAL_EXTENT for it: a typical
sequence length or batch, never 1, so a generic build is planned for real work.
"""

from __future__ import annotations

from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules import common

# The size a symbolic extent is taken to have in a rule's decisions (not in its loops).
NOMINAL_EXTENT = 128


def nominal(extents) -> list[int]:
    """Extents with each symbolic one (None) at NOMINAL_EXTENT."""
    return [NOMINAL_EXTENT if e is None else e for e in extents]


def schedule_injective_symbolic(sch: Schedule, rv, info: common.CpuInfo, parallel=True) -> None:
    """Static innermost loops fused where contiguous and vectorized; the leading loops,
    symbolic ones among them, fused and parallel (the work is taken to be large)."""
    loops = list(sch.get_loops(rv))
    extents = [common.const_int(sch.get(lp).extent) for lp in loops]
    static_tail = 0
    while static_tail < len(extents) and extents[-1 - static_tail] is not None:
        static_tail += 1
    if static_tail == 0:
        # The innermost loop itself is symbolic: it stays a plain loop (LLVM vectorizes it
        # with a remainder); fusing it with others would divide by symbolic extents per
        # element. Threads over the outer loops when one of them is symbolic too.
        outer = loops[:-1]
        if parallel and outer and any(e is None for e in extents[:-1]):
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return
    block = sch.get(rv)
    run = 1
    if len(loops) == len(block.iter_vars):
        run = min(common._contiguous_suffix(block, extents), static_tail)
    inner = sch.fuse(*loops[-run:]) if run > 1 else loops[-1]
    inner_ext = common.product(extents[-run:])
    outer_loops = loops[:-run]
    width = 1 if common._calls_scalar_only(block) else common.vector_width(inner_ext, info.lanes)
    if width > 1:
        if inner_ext > width:
            rest, vec = sch.split(inner, [None, width])
            outer_loops.append(rest)
        else:
            vec = inner
        sch.vectorize(vec)
    if parallel and outer_loops:
        sch.parallel(sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0])


def schedule_rows(sch: Schedule, info: common.CpuInfo) -> bool:
    """Row-wise kernels over a symbolic last axis (softmax over the sequence): every block
    computed per row inside the last block's row loop, rows in parallel, each row's loops
    left plain for LLVM to vectorize with a remainder. Splits planned for a nominal length
    would put a guard inside every vector loop instead."""
    for block in list(sch.get_child_blocks(sch.get_sblock("root")))[:-1]:
        try:
            sch.compute_inline(block)  # elementwise steps (softmax's x - max) into their reader
        except Exception:  # noqa: BLE001 - a reduction, or read by two blocks: stays a loop
            pass
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    loops = sch.get_loops(blocks[-1])
    if len(loops) < 2 or common.const_int(sch.get(loops[-1]).extent) is not None:
        return False
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=False)
    sch.parallel(row)
    for block in blocks:
        if common.view_of(sch, block).is_spatial:
            _vectorize_with_tail(sch, sch.get_loops(block)[-1], info.lanes)
    return True


def _vectorize_with_tail(sch: Schedule, loop, lanes: int) -> None:
    """Whole vectors over a symbolic loop and a scalar tail: the split's guard goes to
    LoopPartition (the hint), which peels the last partial vector off the main loop."""
    outer, inner = sch.split(loop, [None, lanes])
    sch.annotate(outer, "pragma_loop_partition_hint", 1)
    sch.vectorize(inner)
