"""Rule-based default schedules for CPU kernels, so untuned builds are not naive loops.

Runs after FuseTIR, on every PrimFunc of the module, for the target of the surrounding
`with target:` (`tvm.target.Target.current()`; the host CPU when there is none). Each
function gets the first rule that matches its block structure (the rules live with the targets,
in `graphopt.targets.cpu.schedules`: `attention` first, then those of `schedule_func`):

    attention    fuse's attention group: row blocks in parallel, softmax row per thread,
                 register-tiled Q K^T and P V

    matmul       C[b.., i, j] += A[b.., i, k] * B[b.., k, j] (+ fused epilogue): pad odd
                 M/N, B packed into panels, mr x nr register tile, epilogue per tile
    conv         sliding-window reduction with a weight (conv2d NCHW regular, depthwise,
                 grouped, pointwise; conv1d): channels or width in SIMD lanes
    window       the same without a weight (pooling, sums over outer axes)
    reduction    softmax, layer norm, mean: s_tir.dlight.cpu.Reduction, else outer parallel
    elementwise  fuse, vectorize, parallel

Weight packing (matmul B panels, conv channel blocks) is moved out of the kernels with
SplitLayoutRewritePreproc and, for constant weights, folded at compile time (FoldConstant,
then DeadCodeElimination drops the packing functions); `prepack=false` keeps the packing as a
kernel run on every call. A function no rule matches, or whose rules all raise, is kept exactly
as it was and counted in `untouched` (`failed` counts functions where some rule raised; the
messages are in `.errors`). Functions already marked `tirx.is_scheduled` (tuning records,
dlight) are skipped. Belongs in a CPU target's schedule stage, after FuseTIR.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm

from graphopt.pass_helpers import check_rule_names, schedule_kernels, with_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cpu import schedules as rules
from graphopt.targets.cpu.int8 import materialize as int8_rules


def _target() -> tvm.target.Target:
    current = tvm.target.Target.current(allow_none=True)
    if current is not None:
        return current
    from graphopt import _tvm

    return _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})


@register_pass
class ScheduleCpu(GraphPass):
    """Default (untuned) CPU schedules: matmul/conv tiling, vectorize, parallelize."""

    name = "schedule-cpu"

    @dataclass(frozen=True)
    class Options:
        # Rules to use, ':'-separated in pipeline text (empty: all).
        rules: tuple[str, ...] = ()
        # Pack constant weights (matmul B panels, conv channel blocks) at compile time.
        prepack: bool = True

    def run(self, mod: tvm.IRModule) -> PassResult:
        target = _target()
        info = rules.cpu_info(target)
        stats = {f"scheduled_{r}": 0 for r in rules.RULES}
        stats.update(untouched=0, failed=0, already_scheduled=0)
        if info is None:
            count = sum(1 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
            stats["untouched"] = count
            return PassResult(mod, False, stats)
        check_rule_names("schedule-cpu", self.options.rules, tuple(rules.RULES))
        enabled = set(self.options.rules or rules.RULES)
        upper = _upper_bounds(mod)
        done, stats, self.errors = schedule_kernels(
            mod,
            lambda func: rules.schedule_func(func, info, target, enabled, upper),
            rules.RULES,
            rules.SCHEDULED_ATTR,
        )
        stats["prepacked_weights"] = 0
        if not done:
            return PassResult(mod, False, stats)
        new = with_functions(mod, {gvar: o.func for gvar, o in done.items()})
        if any(o.prepack for o in done.values()):
            new, stats["prepacked_weights"] = _split_prepack(new, self.options.prepack)
        return PassResult(new, True, stats)


def _upper_bounds(mod: tvm.IRModule) -> dict[str, int]:
    """Symbolic dim -> largest size, from `main`'s tir_var_upper_bound (graphopt.frontend)."""
    main = next((f for g, f in mod.functions.items() if g.name_hint == "main"), None)
    attrs = getattr(main, "attrs", None)
    bounds = attrs.get("tir_var_upper_bound") if attrs is not None else None
    return {str(k): int(v) for k, v in (bounds or {}).items()}


def _split_prepack(mod: tvm.IRModule, fold: bool) -> tuple[tvm.IRModule, int]:
    """Move weight-packing blocks out of the kernels; fold them where the weight is constant.

    Without folding (or for weights that are not constants) the packing still runs, as its own
    kernel before the one that uses it. Returns the module and how many packed weights became
    constants.
    """
    from tvm import relax

    # lower-int8 kernels (no root block) would abort it: they are set aside meanwhile.
    mod = int8_rules.without_int8_kernels(relax.transform.SplitLayoutRewritePreproc(), mod)
    split = _prepack_calls(mod)
    if not fold:
        return mod, 0
    mod = relax.transform.FoldConstant()(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, split - _prepack_calls(mod)


def _prepack_calls(mod: tvm.IRModule) -> int:
    """call_tir calls of the packing functions SplitLayoutRewritePreproc creates."""
    from graphopt import _tvm

    return sum(
        1
        for call in _tvm.iter_relax_calls(mod)
        if isinstance(call.op, tvm.ir.Op)
        and call.op.name == "relax.call_tir"
        and call.args[0].name_hint.endswith("_weight_prepack")
    )
