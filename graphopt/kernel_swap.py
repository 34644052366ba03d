"""Shared by the targets' materialize stages: put target kernels in place of portable ones.

A graph pass leaves a portable kernel (scalar TIR that carries its recipe) per compressed
layer; a target's materialize stage builds its own kernel for each and points the calls at
it, with the constants repacked for it. The swapping is the same for every kernel family and
target, so it lives here, below the targets."""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.errors import PipelineError


def swap_kernels(mod: tvm.IRModule, built: dict, mutator) -> tvm.IRModule:
    """`mod` with every Relax function rewritten by `mutator` (whose builder emits the target
    kernels of `built`) and the portable kernels that `built` replaces dropped."""
    updated = {
        gvar: mutator.visit_expr(func)
        for gvar, func in mod.functions.items()
        if isinstance(func, relax.Function)
    }
    out = mutator.builder_.get()
    new = tvm.IRModule({g: f for g, f in out.functions.items() if g not in built}, attrs=mod.attrs)
    for gvar, func in updated.items():
        new[gvar] = func
    return new


def add_kernels(builder, built: dict, kernel_of) -> dict:
    """The built kernels added under new GlobalVars (a GlobalVar's type is its function's
    signature, which changed): portable GlobalVar -> target kernel's GlobalVar, or -> {variant:
    GlobalVar} where `kernel_of` gives several variants ({variant: kernel}; e.g. dense and
    block-sparse, chosen per call by the call's constants)."""
    renamed = {}
    for gvar, entry in built.items():
        kernels = kernel_of(entry)
        if isinstance(kernels, dict):
            renamed[gvar] = {
                variant: builder.add_func(func, f"{gvar.name_hint}_{variant}")
                for variant, func in kernels.items()
            }
        else:
            renamed[gvar] = builder.add_func(kernels, gvar.name_hint)
    return renamed


def portable_entry(call: relax.Call, built: dict):
    """`built`'s entry when `call` is a call_tir of a portable kernel it replaces, else None."""
    is_call_tir = isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"
    return built.get(call.args[0]) if is_call_tir else None


def packed_constants(stage: str, call: relax.Call, consts: list, pack) -> list[relax.Expr]:
    """The kernel's constant operands packed by `pack` for the target kernel; a one-line
    error naming `stage` when an earlier pass turned one into something else."""
    if not all(isinstance(a, tvm.ir.GenericConst) for a in consts):
        raise PipelineError(
            f"{stage}: the constants of {call.args[0].name_hint} are no longer constants; "
            "cannot pack them"
        )
    return [relax.const(c) for c in pack([_tvm.constant_value(a) for a in consts])]


@relax.expr_functor.mutator
class RepackCalls(relax.PyExprMutator):
    """Points the calls of the portable kernels in `built` (GlobalVar -> entry) at the target
    kernels (`kernel_of(entry)`); `operands(call, entry)` gives each new call's arguments, or
    (variant, arguments) where the entry has variants."""

    def __init__(self, mod: tvm.IRModule, built: dict, operands, kernel_of) -> None:
        super().__init__(mod)
        self.built = built
        self.operands = operands
        self.renamed = add_kernels(self.builder_, built, kernel_of)
        self.calls = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        entry = portable_entry(call, self.built)
        if entry is None:
            return call
        self.calls += 1
        kernel, operands = self.renamed[call.args[0]], self.operands(call, entry)
        if isinstance(kernel, dict):
            variant, operands = operands
            kernel = kernel[variant]
        return relax.call_tir(kernel, relax.Tuple(operands), call.ty)


def materialize(mod: tvm.IRModule, built: dict, operands, stats: dict, kernel_of=None):
    """`mod` with the calls of `built`'s portable kernels swapped (RepackCalls; an entry's
    kernel is its first item unless `kernel_of` says otherwise), and `stats` with their
    count; `mod` itself when nothing was built."""
    if not built:
        stats["calls"] = 0
        return mod, False
    mutator = RepackCalls(mod, built, operands, kernel_of or (lambda entry: entry[0]))
    new = swap_kernels(mod, built, mutator)
    stats["calls"] = mutator.calls
    return new, True
