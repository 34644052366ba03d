"""The CPU schedule rules as ordered objects: one registry, used by compile and by tuning.

A rule has a name (`schedule-cpu{rules=...}` selects by name), `applies(func, info)` (a cheap
structural test; a rule whose `apply` raises is also taken as not applying), `prepare(func)`
(a rewrite of the function before scheduling, default none) and `apply(sch, func, info,
target)`, which schedules `sch` completely and returns True, or raises. Order matters: the
first rule that applies wins, so the fused attention kernel comes before the generic rules that
would take its softmax, and elementwise comes last.

Adding a rule: write its schedule function in a file of this folder, wrap it in a
`ScheduleRule` subclass below and put it in `REGISTRY` at the right place.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules import attention
from graphopt.targets.cpu.schedules.common import CpuInfo
from graphopt.targets.cpu.schedules.conv import schedule_window
from graphopt.targets.cpu.schedules.elementwise import schedule_elementwise
from graphopt.targets.cpu.schedules.matmul import schedule_matmul
from graphopt.targets.cpu.schedules.reduction import schedule_reduction


class ScheduleRule:
    """Base class: applies to everything, prepares nothing; subclasses implement `apply`."""

    name = ""

    def applies(self, func: tirx.PrimFunc, info: CpuInfo) -> bool:
        return True

    def prepare(self, func: tirx.PrimFunc) -> tirx.PrimFunc:
        return func

    def apply(self, sch: Schedule, func: tirx.PrimFunc, info: CpuInfo, target) -> bool:
        raise NotImplementedError


class AttentionRule(ScheduleRule):
    """fuse's attention group: row blocks in parallel, softmax row per thread, register tiles."""

    name = "attention"

    def applies(self, func: tirx.PrimFunc, info: CpuInfo) -> bool:
        try:
            return attention.match_attention(Schedule(func), func) is not None
        except Exception:  # noqa: BLE001 - no root block (an opaque kernel): not attention
            return False

    def prepare(self, func: tirx.PrimFunc) -> tirx.PrimFunc:
        # The head merge's reshape indexes `((j // 16 + i) // 13 + b) % 2` (= b); left so,
        # compute_at cannot bound a row block's region and takes whole rows.
        return tvm.s_tir.transform.StmtSimplify()(tvm.IRModule({"main": func}))["main"]

    def apply(self, sch, func, info, target) -> bool:
        return attention.schedule_attention(sch, func, info)


class MatmulRule(ScheduleRule):
    """C[b.., i, j] += A[b.., i, k] * B[b.., k, j] (+ epilogue): packed panels, register tile."""

    name = "matmul"

    def apply(self, sch, func, info, target) -> bool:
        return schedule_matmul(sch, func, info)


class ConvRule(ScheduleRule):
    """Sliding-window reduction with a weight (conv2d, depthwise, grouped, conv1d)."""

    name = "conv"

    def apply(self, sch, func, info, target) -> bool:
        return schedule_window(sch, func, info, need_weight=True)


class WindowRule(ScheduleRule):
    """Sliding-window reduction without a weight (pooling, sums over outer axes)."""

    name = "window"

    def apply(self, sch, func, info, target) -> bool:
        return schedule_window(sch, func, info, need_weight=False)


class ReductionRule(ScheduleRule):
    """softmax, layer norm, mean: dlight's CPU Reduction, else outer loops in parallel."""

    name = "reduction"

    def apply(self, sch, func, info, target) -> bool:
        return schedule_reduction(sch, func, info, target)


class ElementwiseRule(ScheduleRule):
    """Everything inlined into the last block; fused, vectorized, parallel loops."""

    name = "elementwise"

    def apply(self, sch, func, info, target) -> bool:
        return schedule_elementwise(sch, func, info)


REGISTRY: tuple[ScheduleRule, ...] = (
    AttentionRule(),
    MatmulRule(),
    ConvRule(),
    WindowRule(),
    ReductionRule(),
    ElementwiseRule(),
)
