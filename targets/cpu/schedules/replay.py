"""Kernels with symbolic extents: scheduled at a nominal size, the schedule replayed.

Most rules decide from static extents (conv tiles, window widths, reduction splits). For a
kernel whose symbolic dims are outer ones (a CNN's batch, a sequence), the function is
specialized at a nominal size (each symbolic dim at min(upper bound, NOMINAL_EXTENT)), the
rules schedule that static copy, and the schedule's trace is replayed on the symbolic
function. Every schedule primitive keeps the numbers, so a replay that succeeds is correct
at every size; splits planned for the nominal size get a guard on the others (confined to
the last tile by LoopPartition where the sizes are symbolic beyond a batch). The rules that
handle symbolic extents themselves (matmul pads symbolic M/N to whole tiles, elementwise)
schedule the symbolic function directly. A replay that fails leaves the rules on the
symbolic function as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from graphopt import _tvm
from graphopt.targets.cpu.schedules.common import const_int, walk
from graphopt.targets.cpu.schedules.symbolic import NOMINAL_EXTENT

# Rules that schedule symbolic extents directly (symbolic.py, matmul.py).
NATIVE = ("matmul", "elementwise")


def symbolic_vars(func: tirx.PrimFunc) -> list[tirx.Var]:
    """The symbolic dims of the function's buffer parameters, in order of appearance."""
    found: dict[str, tirx.Var] = {}
    for param in func.params:
        shape = getattr(param.ty, "shape", None) or []
        for dim in shape:
            for var in tirx.analysis.undefined_vars(dim):
                found.setdefault(var.name, var)
    return list(found.values())


def specialize(func: tirx.PrimFunc, sizes: Mapping[str, int]) -> tirx.PrimFunc | None:
    """The function with each symbolic dim at its size (`_tvm.specialize_dims`)."""
    return _tvm.specialize_dims(func, sizes)


def batch_dims(func: tirx.PrimFunc) -> set[str]:
    """Symbolic dims that are only ever the leading dim of a buffer: a batch of independent
    items (images), unlike a sequence, whose length sits inside the tensors."""
    leading: set[str] = set()
    inside: set[str] = set()
    for param in func.params:
        for axis, dim in enumerate(getattr(param.ty, "shape", None) or []):
            names = {v.name for v in tirx.analysis.undefined_vars(dim)}
            if axis == 0 and isinstance(dim, tirx.Var):
                leading |= names
            else:
                inside |= names
    return leading - inside


def nominal_sizes(func: tirx.PrimFunc, upper: Mapping[str, int]) -> dict[str, int]:
    """Each symbolic dim at min(its upper bound, NOMINAL_EXTENT); a batch dim at 1.

    A kernel planned for one item runs a batch as a loop of single items, each with the
    one-item kernel's threads and tiles. Planned for a batch of 8 instead, a conv spreads its
    tasks over the batch and a classifier pads its rows to a register tile, and batch 1 (the
    common size) ran 1.34x slower than a static build of it."""
    batch = batch_dims(func)

    def size(name: str) -> int:
        return 1 if name in batch else min(int(upper.get(name, NOMINAL_EXTENT)), NOMINAL_EXTENT)

    return {v.name: size(v.name) for v in symbolic_vars(func)}


def replay(rule, static: tirx.PrimFunc, func: tirx.PrimFunc, info, target) -> Schedule:
    """`rule` scheduled on the static copy, its trace replayed on the symbolic function
    (raises where the rule or the replay fails)."""
    prepared = rule.prepare(static)
    sch = Schedule(prepared)
    done = rule.apply(sch, prepared, info, target)
    if isinstance(done, Schedule):
        sch, done = done, True
    if not done:
        raise ValueError("does not apply at the nominal size")
    target_sch = Schedule(rule.prepare(func))
    sch.trace.apply_to_schedule(target_sch, remove_postproc=True)
    if not info.large_work:
        check_lowers(target_sch.mod["main"], target)
        return target_sch
    plain = target_sch.copy()
    partition_symbolic_loops(target_sch)
    try:
        check_lowers(target_sch.mod["main"], target)
    except Exception:  # noqa: BLE001 - a partition lowering cannot take: the guarded loops
        check_lowers(plain.mod["main"], target)
        return plain
    return target_sch


def partition_symbolic_loops(sch: Schedule) -> None:
    """Each serial loop of symbolic extent gets LoopPartition's hint: a split planned for
    the nominal size leaves a guard on every element of its tiles (a conv's unrolled row of
    16 pixels checks each against the width), which the partition confines to the last tile
    (a 1x1 conv of MobileNetV2 at 224 pixels: 1.8x faster). Loops whose extent has a min or
    max (the rows a depthwise task pads) keep their guards: LoopPartition crashed on them."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        for rv in sch.get_loops(block):
            loop = sch.get(rv)
            if (
                const_int(loop.extent) is None
                and loop.kind == tirx.ForKind.SERIAL
                and not _has_minmax(loop.extent)
            ):
                sch.annotate(rv, "pragma_loop_partition_hint", 1)


def check_lowers(func: tirx.PrimFunc, target) -> None:
    """Raise where TIR lowering fails on the replayed schedule: a split planned for the
    nominal size can leave a guard over fused symbolic loops that the iterator analysis of
    lowering cannot prove (a padded image of symbolic height and width), which would fail
    the whole build rather than this one rule."""
    func = func.with_attr("global_symbol", "symbolic_check")
    tvm.tirx.build(tvm.IRModule({"main": func}), target=target)


def _has_minmax(expr) -> bool:
    """Whether a min or max occurs in the expression."""
    found: list = []
    walk(expr, lambda e: found.append(e) if isinstance(e, (tirx.Min, tirx.Max)) else None)
    return bool(found)
