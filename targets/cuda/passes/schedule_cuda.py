"""Rule-based GPU schedules for every kernel no tuning record scheduled.

Runs after FuseTIR, under the CUDA target (`tvm.target.Target.current()`). Each PrimFunc gets
the first rule of `graphopt.targets.cuda.schedules.rules.RULES` that schedules it: graphopt's
`int8-tensorcore` and `int8-dp4a` (the int8 GEMMs of materialize-int8-cuda), `window`
(depthwise convs, pooling), `elementwise` (vectorized, coalesced injective kernels),
`softmax` and `layer-norm` (a warp per row, shuffle reductions) and `matmul-bf16` (bf16 on
tensor cores), then dlight's Matmul (tensor cores for fp16 / int8 with every dimension above
64), GEMV, Reduction, GeneralReduction, Transpose and, last, Fallback. The
stats count kernels per rule (`scheduled_<rule>`), so the compile report shows how many
kernels each rule took and how many fell to the Fallback; `self.kernels` maps each kernel to
its rule. Kernels marked `tirx.is_scheduled` (tuning records) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm

from graphopt.errors import PipelineError
from graphopt.int4_ops import RECIPE_ATTR as INT4_ATTR
from graphopt.pass_helpers import check_rule_names, schedule_kernels, with_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.sparse_ops import RECIPE_ATTR as SPARSE_ATTR
from graphopt.targets.cuda.schedules import rules


@register_pass
class ScheduleCuda(GraphPass):
    """Default GPU schedules: graphopt's rules (window, softmax, ...), then dlight's."""

    name = "schedule-cuda"

    @dataclass(frozen=True)
    class Options:
        # Rules to use, ':'-separated in pipeline text (empty: all), e.g. dlight's only:
        # matmul:gemv:reduction:general-reduction:transpose:fallback
        rules: tuple[str, ...] = ()

    def run(self, mod: tvm.IRModule) -> PassResult:
        target = tvm.target.Target.current(allow_none=True)
        if target is None or target.kind.name != "cuda":
            raise PipelineError("schedule-cuda runs under a CUDA target (`--target cuda`)")
        check_rule_names("schedule-cuda", self.options.rules, tuple(rules.RULES))
        done, stats, self.errors = schedule_kernels(
            mod,
            lambda func: rules.schedule_func(func, target, self.options.rules),
            rules.REPORTED,
            rules.SCHEDULED_ATTR,
        )
        self.kernels = {gvar.name_hint: o.rule for gvar, o in done.items()}
        new = with_functions(mod, {gvar: o.func for gvar, o in done.items()})
        _check_bound(new)
        return PassResult(new, bool(done), stats)


def _check_bound(mod: tvm.IRModule) -> None:
    """Every kernel must run on GPU threads: one without a thread binding would be built as
    host code reading device memory. PipelineError naming them (e.g. the CPU kernels of
    --quantize int4 or of block-sparse pruning, which come marked as scheduled)."""
    unbound = sorted(
        gvar.name_hint
        for gvar, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc) and not rules.thread_bound(func)
    )
    if not unbound:
        return
    kinds = sorted(
        {kind for name in unbound for attr, kind in _CPU_ONLY.items() if attr in _attrs(mod[name])}
    )
    hint = f"; {' and '.join(kinds)} kernels are CPU-only (not supported on cuda)" if kinds else ""
    raise PipelineError(  # a user error, shown as one line
        f"schedule-cuda: {len(unbound)} kernels have no GPU schedule "
        f"({', '.join(unbound[:5])}{', ...' if len(unbound) > 5 else ''}){hint}"
    )


# Recipe attributes of compression kernels that only CPU targets build.
_CPU_ONLY = {INT4_ATTR: "--quantize int4", SPARSE_ATTR: "block-sparse (--prune)"}


def _attrs(func) -> dict:
    return dict(func.attrs.items()) if func.attrs is not None else {}
