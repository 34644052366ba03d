"""Helpers shared by pass files (a pass never imports another pass)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_infra import PassResult


def rewrite_planned(
    mod: tvm.IRModule,
    plans_of: Callable[[object], dict],
    rewriter_of: Callable[[tvm.IRModule, dict], relax.PyExprMutator],
) -> tvm.IRModule | None:
    """Plan, then rewrite, each Relax function: `plans_of(BindingGraph)` says what to replace
    (binding var -> plan), `rewriter_of(module, plans)` a mutator that does it, its builder
    adding kernels to a copy of `mod`. The rewritten module after dead-code elimination, or
    None when no function had a plan."""
    from graphopt.binding_graph import BindingGraph

    new, changed = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs), False
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        plans = plans_of(BindingGraph(func, new))
        if not plans:
            continue
        rewriter = rewriter_of(new, plans)
        rewritten = rewriter.visit_expr(func)
        new = rewriter.builder_.get()
        new[gvar] = rewritten
        changed = True
    return relax.transform.DeadCodeElimination()(new) if changed else None


@dataclass
class KernelCall:
    """What a planned binding becomes: a call_tir of the kernel built from `spec` (a recipe
    with `.text()`), on `args`, returning `out_ty`."""

    spec: object
    args: list
    out_ty: relax.Type


@relax.expr_functor.mutator
class PlannedCalls(relax.PyExprMutator):
    """Replaces each planned binding (var -> KernelCall) by its call (what fed it dies in
    DCE); `kernel_of(spec)` builds a kernel once per spec, shared by identical layers, named
    `name` (or `name(spec)`)."""

    def __init__(self, mod: tvm.IRModule, plans: dict, kernels: dict, kernel_of, name):
        super().__init__(mod)
        self.plans, self.kernels, self.kernel_of, self.name = plans, kernels, kernel_of, name

    def _kernel(self, spec) -> tvm.ir.GlobalVar:
        key = spec.text()
        if key not in self.kernels:
            name = self.name(spec) if callable(self.name) else self.name
            self.kernels[key] = self.builder_.add_func(self.kernel_of(spec), name)
        return self.kernels[key]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = self.plans.get(binding.var)
        if plan is None:
            super().visit_var_binding_(binding)
            return
        args = relax.Tuple([self.visit_expr(a) for a in plan.args])
        call = relax.call_tir(self._kernel(plan.spec), args, plan.out_ty)
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))


def call_count(mod: tvm.IRModule, op_name: str | None = None) -> int:
    """Number of calls in the module's Relax functions (of one operator, if given)."""
    counts = _tvm.op_counts(mod)
    return counts.get(op_name, 0) if op_name else sum(counts.values())


def apply_tvm_pass(mod: tvm.IRModule, tvm_pass: tvm.transform.Pass, **stats: int) -> PassResult:
    """Run a TVM pass; `modified` is decided by structural comparison, never assumed."""
    new = tvm_pass(mod)
    return PassResult(new, not _tvm.structural_equal(new, mod), stats)


def rewrite_relax_functions(
    mod: tvm.IRModule,
    make_mutator: Callable[[tvm.IRModule], relax.PyExprMutator],
    skip: Callable[[relax.Function], bool] = lambda _f: False,
    finish: Callable[[relax.Expr], relax.Expr] = lambda f: f,
) -> tuple[tvm.IRModule, int]:
    """Run a counting mutator (`.count`: rewrites made) over every Relax function not skipped.

    Works on a copy: a mutator's builder edits the module it was given in place. `finish`
    post-processes each rewritten function. Returns the new module (`mod` itself when nothing
    was rewritten) and the total count.
    """
    new, total = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs), 0
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function) or skip(func):
            continue
        mutator = make_mutator(new)
        rewritten = mutator.visit_expr(func)
        if not mutator.count:
            continue
        total += mutator.count
        new = mutator.builder_.get()
        new[gvar] = finish(rewritten)
    return (new, total) if total else (mod, 0)


def check_rule_names(pass_name: str, wanted: tuple[str, ...], known: tuple[str, ...]) -> None:
    """A schedule pass's `rules=` option names only rules it has (one-line PipelineError)."""
    from graphopt.errors import PipelineError

    unknown = set(wanted) - set(known)
    if unknown:
        raise PipelineError(
            f"{pass_name}: unknown rule {', '.join(sorted(unknown))} (rules: {', '.join(known)})"
        )


def schedule_kernels(
    mod: tvm.IRModule, schedule: Callable, rule_names, scheduled_attr: str
) -> tuple[dict, dict[str, int], dict[str, str]]:
    """Apply a target's rule registry to every kernel not scheduled yet (by tuning records).

    schedule(func) returns an outcome with `rule` (None: no rule applied), `func` and `errors`.
    Returns ({GlobalVar: outcome} for the scheduled kernels, the counts every schedule pass
    reports, {kernel name: rule errors})."""
    stats = {f"scheduled_{r}": 0 for r in rule_names}
    stats.update(untouched=0, failed=0, already_scheduled=0)
    done, errors = {}, {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs is not None and func.attrs.get(scheduled_attr):
            stats["already_scheduled"] += 1
            continue
        outcome = schedule(func)
        if outcome.errors:
            stats["failed"] += 1
            errors[gvar.name_hint] = "; ".join(outcome.errors)
        if outcome.rule is None:
            stats["untouched"] += 1
            continue
        stats[f"scheduled_{outcome.rule}"] += 1
        done[gvar] = outcome
    return done, stats, errors


def with_functions(mod: tvm.IRModule, funcs: dict) -> tvm.IRModule:
    """`mod` with some functions replaced ({GlobalVar: function})."""
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    for gvar, func in funcs.items():
        new[gvar] = func
    return new
