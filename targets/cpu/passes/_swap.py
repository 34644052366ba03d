"""Shared by the materialize stages: put target kernels in place of portable ones."""

from __future__ import annotations

import tvm
from tvm import relax


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
