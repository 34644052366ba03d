"""Default (untuned) CPU schedules for the TIR kernels of real models, for LLVM targets.

`schedule-cpu` (targets/cpu/passes/schedule_cpu.py) runs them on every PrimFunc after FuseTIR.
Each rule reads the block structure of one PrimFunc (iterator kinds, buffer indices), never its
name, and either schedules it completely or raises (the caller then keeps the original). The
rules are objects in one ordered registry (`rules.py`: `applies()`, `apply()`); in order:

- attention (attention.py): fuse's attention group,
  row blocks in parallel, softmax row per thread, register-tiled Q K^T and P V.
- matmul (matmul.py): one reduction block `C[b.., i.., j] += A[b.., i.., k] * B[b.., k, j]`
  (batch dims, 3-D x 2-D, any layout of B, fused elementwise epilogue). Odd M / N are padded
  with `pad_einsum` (predicated tiles run several times slower); B is packed into panels
  `[j // nr, k, j % nr]`; an `mr x nr` tile of accumulators (nr = one or two SIMD registers)
  stays in registers over k; the epilogue runs per tile from the accumulators. K is blocked
  when K x 64 columns of B outgrow L2.
- conv (conv.py): one reduction block `C[.., f, y, x] += D[.., y*s + ry, x*s + rx] * W[f, ..]`.
  Regular / pointwise conv: output channels in SIMD lanes (weight packed channel-last), a few
  output pixels unrolled, data broadcast: any stride works. Depthwise / grouped / channel
  counts that fit no vector: output width in SIMD lanes, a block of rows unrolled with the
  window so shared input rows load once, padding done per channel in cache; strided convs over
  wide maps keep TVM's loop order (LLVM vectorizes the strided loads with shuffles).
- window (conv.py): the same without a weight (max / avg pooling, sums over outer axes).
- reduction (reduction.py): `s_tir.dlight.cpu.Reduction` (softmax, layer norm, mean), else the
  leading spatial loops made parallel.
- elementwise (elementwise.py): everything inlined into the last block, contiguous loops
  fused, vectorized, parallel.

Weight packing blocks that read a function parameter are marked as layout rewrites, so the
pass can move them out (SplitLayoutRewritePreproc) and fold them for constant weights. What
the rules share (CpuInfo, IR helpers, injective scheduling, tile writer) is in common.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules import replay, rows, symbolic
from graphopt.targets.cpu.schedules.common import (
    PREPACK_ATTR,
    SCHEDULED_ATTR,
    CpuInfo,
    Outcome,
    cpu_info,
)
from graphopt.targets.cpu.schedules.rules import REGISTRY, ScheduleRule

__all__ = [
    "PREPACK_ATTR",
    "REGISTRY",
    "RULES",
    "SCHEDULED_ATTR",
    "CpuInfo",
    "Outcome",
    "ScheduleRule",
    "cpu_info",
    "schedule_func",
]

RULES = tuple(rule.name for rule in REGISTRY)


def schedule_func(
    func: tirx.PrimFunc,
    info: CpuInfo,
    target,
    enabled: set[str] | None = None,
    upper_bounds: Mapping[str, int] | None = None,
) -> Outcome:
    """Try the registry's rules in order on one PrimFunc; the first that applies wins.

    `schedule-cpu` (compile) and `graphopt tune` (its default-schedule baseline) both call
    this, so both see the same schedule for every kernel. A rule whose `apply` raises is
    dropped (its half-done schedule with it) and the next one tried, so the result is always
    either a complete schedule or the function exactly as it was. In a build with symbolic
    input dims (`upper_bounds`: symbolic dim -> largest size, from --input-shape ranges) a
    function with symbolic extents is scheduled for them (symbolic.py, replay.py).
    """
    if upper_bounds and replay.symbolic_vars(func):
        info = dataclasses.replace(info, symbolic=True)
        outcome = _schedule_symbolic(func, info, target, enabled, upper_bounds)
        if outcome is not None:
            return outcome
    return _first_rule(func, info, target, enabled, lambda rule: _direct(rule, func, info, target))


def _direct(rule: ScheduleRule, func, info, target):
    if not rule.applies(func, info):
        return None
    prepared = rule.prepare(func)
    sch = Schedule(prepared)
    done = rule.apply(sch, prepared, info, target)
    if isinstance(done, Schedule):
        sch, done = done, True
    return sch if done else None


def _rows(func, info) -> Schedule | None:
    """Rows over a symbolic axis: vectorized reductions (rows.py), else the plain
    per-row schedule (symbolic.py) where that one does not take the function."""
    try:
        sch = rows.schedule_rows(func, info)
    except Exception:  # noqa: BLE001 - a structure it cannot schedule: the plain one
        sch = None
    if sch is not None:
        return sch
    sch = Schedule(func)
    return sch if symbolic.schedule_rows(sch, info) else None


def _first_rule(func, info, target, enabled, attempt, errors=None) -> Outcome:
    """The first enabled rule whose `attempt(rule)` returns a schedule."""
    errors = errors if errors is not None else []
    for rule in REGISTRY:
        if enabled is not None and rule.name not in enabled:
            continue
        try:
            sch = attempt(rule)
        except Exception as err:  # noqa: BLE001 - any schedule error: drop this rule
            lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            errors.append(f"{rule.name}: {lines[-1] if lines else type(err).__name__}")
            continue
        if sch is not None:
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            prepack = any(PREPACK_ATTR in sch.get(b).annotations for b in blocks)
            new = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
            return Outcome(rule.name, new, errors, prepack)
    return Outcome(None, func, errors)


def _schedule_symbolic(func, info, target, enabled, upper) -> Outcome | None:
    """The rule the nominal-size copy gets, natively (NATIVE rules) or by replaying its
    schedule; None where neither works (the rules then try the symbolic function as it is)."""
    try:
        static = replay.specialize(func, replay.nominal_sizes(func, upper))
    except Exception:  # noqa: BLE001 - a signature specialize cannot bind: no replay
        return None
    if static is None:
        return None
    errors: list[str] = []
    # Only batch dims: the rules that pad symbolic extents (matmul) plan for one item too.
    batch_only = {v.name for v in replay.symbolic_vars(func)} <= replay.batch_dims(func)
    info = dataclasses.replace(info, large_work=not batch_only)

    def attempt(rule: ScheduleRule):
        if not rule.applies(static, info):
            return None
        if rule.name in replay.NATIVE:
            if batch_only:
                try:
                    return replay.replay(rule, static, func, info, target)
                except Exception:  # noqa: BLE001 - not replayable: the rule's symbolic plan
                    pass
            return _direct(rule, func, info, target)
        if rule.name == "reduction":
            sch = _rows(func, info)
            if sch is not None:
                return sch
        return replay.replay(rule, static, func, info, target)

    outcome = _first_rule(func, info, target, enabled, attempt, errors)
    return outcome if outcome.rule is not None else None
