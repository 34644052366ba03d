"""Put symbolic shapes lifted out of fused groups back inside them.

FuseOpsByPattern passes every non-constant argument of a group's bindings as a parameter of
the group function. With symbolic input dims a reshape's target, `R.shape([1, seq, 4, 8])`,
is not a constant, so the group gets `param_0: R.Shape([1, seq, 4, 8])` and its reshape
reads a variable, which LegalizeOps cannot lower ("reshape_call_te: assert isinstance(
tgt_shape, ShapeExpr)"). Static shapes stay inside as constants; this does the same for
symbolic ones whose dims the group's tensor parameters already define.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from graphopt import _tvm


def inline_shape_params(mod: tvm.IRModule, functions: set[str]) -> tvm.IRModule:
    """Group functions (by name) called with ShapeExpr arguments get them bound inside (the
    same shape at every call: one group function serves every layer)."""
    bound: dict[tvm.ir.GlobalVar, list[int]] = {}
    updates = {}
    for gv, func in mod.functions.items():
        if gv.name_hint not in functions or not isinstance(func, relax.Function):
            continue
        calls = _calls_to(mod, gv)
        if not calls:
            continue
        positions = [
            i
            for i in _inlinable(func, calls[0])
            if all(_tvm.structural_equal(c.args[i], calls[0].args[i]) for c in calls[1:])
        ]
        if positions:
            binding = {func.params[i]: calls[0].args[i] for i in positions}
            updates[gv] = func.bind_params(binding)
            bound[gv] = positions
    if not bound:
        return mod
    # New GlobalVars (add_func types them): the old ones keep the old signatures' types.
    rewriter = _DropArgs(mod, bound)
    rewriter.renamed = {
        gv: rewriter.builder_.add_func(f, gv.name_hint) for gv, f in updates.items()
    }
    updated = {
        gv: rewriter.visit_expr(f)
        for gv, f in mod.functions.items()
        if isinstance(f, relax.Function) and gv not in updates
    }
    out = rewriter.builder_.get()
    new = tvm.IRModule(
        {g: f for g, f in out.functions.items() if g not in updates}, attrs=mod.attrs
    )
    for gv, func in updated.items():
        new[gv] = func
    return new


def _calls_to(mod: tvm.IRModule, target: tvm.ir.GlobalVar) -> list[relax.Call]:
    found: list[relax.Call] = []

    def visit(e):
        if (
            isinstance(e, relax.Call)
            and isinstance(e.op, tvm.ir.GlobalVar)
            and e.op.same_as(target)
        ):
            found.append(e)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _inlinable(func: relax.Function, call: relax.Call) -> list[int]:
    """Positions of ShapeExpr arguments whose symbolic dims other parameters define."""
    defined: set[str] = set()
    for param in func.params:
        shape = getattr(param.ty, "shape", None)
        if isinstance(param.ty, relax.TensorType) and isinstance(shape, relax.ShapeExpr):
            for dim in shape.values:
                defined |= {v.name for v in tirx.analysis.undefined_vars(dim)}
    positions = []
    for i, arg in enumerate(call.args):
        if not isinstance(arg, relax.ShapeExpr):
            continue
        names = {v.name for d in arg.values for v in tirx.analysis.undefined_vars(d)}
        if names and names <= defined:
            positions.append(i)
    return positions


@mutator
class _DropArgs(PyExprMutator):
    """Calls to the rewritten groups without the arguments now bound inside them."""

    def __init__(self, mod: tvm.IRModule, bound: dict) -> None:
        super().__init__(mod)
        self.bound, self.renamed = bound, {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        old = call.op if isinstance(call.op, tvm.ir.GlobalVar) else None
        if old is None or old not in self.renamed:
            return call
        args = [a for i, a in enumerate(call.args) if i not in self.bound[old]]
        return relax.Call(self.renamed[old], args, call.attrs, call.ty_args)
