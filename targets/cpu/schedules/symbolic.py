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
