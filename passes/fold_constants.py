"""Evaluate every sub-graph whose inputs are all constants and replace it by its value.

Before:  w2 = R.permute_dims(W, [1, 0]); y = R.matmul(x, w2)       (W a constant)
After:   y = R.matmul(x, W_t)                                       (W_t computed at compile time)

Also folds shape arithmetic: `R.shape_of(x)` of a statically shaped `x` is a constant shape.
All foldable bindings of a function are evaluated together in one small build (not one build
per operator), and results larger than `max_elements` are left alone so folding never
materializes huge tensors. TVM's own FoldConstant is not used: on dynamic shapes it can leave
references to helper functions it did not keep (seen on ONNX Slice with computed starts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_infra import GraphPass, PassResult, register_pass

# Operators never folded: their value is not a pure function of the inputs, or folding them
# changes what the program means.
_NEVER = {
    "relax.call_tir",
    "relax.call_dps_packed",
    "relax.call_pure_packed",
    "relax.call_packed",
    "relax.null_value",
    "relax.print",
    "relax.assert_op",
    "relax.call_builtin_with_ctx",
    "relax.match_cast",
    "relax.memory.alloc_storage",
    "relax.memory.alloc_tensor",
    "relax.builtin.alloc_tensor",
    "relax.invoke_closure",
    "relax.call_inplace_packed",
}


def _elements(ty) -> int | None:
    """Element count of a statically shaped tensor type, or None if unknown / not a tensor."""
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return int(np.prod([int(d) for d in ty.shape.values]))
    except (TypeError, AttributeError):
        return None


class _Analysis:
    """Which bindings of a function can be folded, and which of them must become constants."""

    def __init__(self, func: relax.Function, max_elements: int) -> None:
        self.max_elements = max_elements
        self.foldable: dict[relax.Var, relax.Expr] = {}
        self.order: list[relax.Var] = []
        self.shapes: dict[relax.Var, relax.ShapeExpr] = {}
        self.used_outside: set[relax.Var] = set()
        for block in func.body.blocks:
            for binding in block.bindings:
                self._visit(binding)
        self._mark_uses(func.body.body)

    def _is_const(self, expr: relax.Expr) -> bool:
        if isinstance(expr, (tvm.ir.Constant, tvm.ir.StringImm)):  # tensors, prim values, dtypes
            return True
        if isinstance(expr, relax.ShapeExpr):
            return all(isinstance(v, tvm.tirx.IntImm) for v in expr.values)
        if isinstance(expr, relax.Tuple):
            return all(self._is_const(f) for f in expr.fields)
        return isinstance(expr, relax.Var) and (expr in self.foldable or expr in self.shapes)

    def _visit(self, binding) -> None:
        if not isinstance(binding, relax.VarBinding):
            self._mark_uses(binding.value)
            return
        var, value = binding.var, binding.value
        if isinstance(value, relax.Call) and _op_name(value) == "relax.shape_of":
            shape = _tvm.static_shape(value.args[0].ty)
            if shape is not None:
                self.shapes[var] = relax.ShapeExpr([tvm.tirx.IntImm("int64", d) for d in shape])
                return
        if self._can_fold(value, var):
            self.foldable[var] = value
            self.order.append(var)
        else:
            self._mark_uses(value)

    def _can_fold(self, value: relax.Expr, var: relax.Var) -> bool:
        if isinstance(value, relax.TupleGetItem):
            return self._is_const(value.tuple_value) and self._small(var.ty)
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return False
        if value.op.name in _NEVER or not value.args:
            return False
        return all(self._is_const(a) for a in value.args) and self._small(var.ty)

    def _small(self, ty) -> bool:
        if isinstance(ty, relax.TupleType):
            return all(self._small(f) for f in ty.fields)
        n = _elements(ty)
        return n is not None and n <= self.max_elements

    def _mark_uses(self, expr: relax.Expr) -> None:
        def visit(e):
            if isinstance(e, relax.Var) and (e in self.foldable or e in self.shapes):
                self.used_outside.add(e)

        relax.analysis.post_order_visit(expr, visit)

    def frontier(self) -> list[relax.Var]:
        """Foldable tensors used by code that stays: these become constants."""
        return [
            v for v in self.order if v in self.used_outside and isinstance(v.ty, relax.TensorType)
        ]


def _op_name(call: relax.Call) -> str:
    return call.op.name if isinstance(call.op, tvm.ir.Op) else ""


def _evaluate(analysis: _Analysis, frontier: list[relax.Var]) -> list[np.ndarray]:
    """Build one parameterless function computing every frontier value, run it once."""
    from graphopt.build import evaluate

    bb = relax.BlockBuilder()
    with bb.function("main", []):
        with bb.dataflow():
            remap: dict[relax.Var, relax.Expr] = dict(analysis.shapes)
            for var in analysis.order:
                remap[var] = bb.emit(_Rebinder(remap).visit_expr(analysis.foldable[var]))
            out = bb.emit_output(relax.Tuple([remap[v] for v in frontier]))
        bb.emit_func_output(out)
    return evaluate(bb.get(), [])


@relax.expr_functor.mutator
class _Rebinder(relax.PyExprMutator):
    """Replace uses of the original function's vars by their copies in the evaluation build."""

    def __init__(self, remap: dict) -> None:
        super().__init__()
        self.remap = remap

    def visit_var_(self, var):
        return self.remap.get(var, var)

    def visit_dataflow_var_(self, var):
        return self.remap.get(var, var)


def _with_values(func: relax.Function, values: dict) -> relax.Function:
    """Same function, with each folded var bound to its constant (same var, new value)."""
    blocks = []
    for block in func.body.blocks:
        bindings = [
            relax.VarBinding(b.var, values[b.var]) if b.var in values else b for b in block.bindings
        ]
        cls = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(cls(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)


@register_pass
class FoldConstants(GraphPass):
    """Fold every constant sub-graph (weight transposes, reshapes, casts, shape arithmetic)."""

    name = "fold-constants"

    @dataclass(frozen=True)
    class Options:
        max_elements: int = 1 << 24  # 64 MiB of float32: larger results are not materialized

    def run(self, mod: tvm.IRModule) -> PassResult:
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        folded = 0
        for gvar, func in mod.functions.items():
            if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
                continue
            analysis = _Analysis(func, self.options.max_elements)
            frontier = analysis.frontier()
            shapes = {v: s for v, s in analysis.shapes.items() if v in analysis.used_outside}
            if not frontier and not shapes:
                continue
            values: dict[relax.Var, relax.Expr] = dict(shapes)
            if frontier:
                arrays = _evaluate(analysis, frontier)
                values.update(
                    {v: relax.const(a, str(v.ty.dtype)) for v, a in zip(frontier, arrays)}
                )
            new[gvar] = _with_values(func, values)
            folded += len(analysis.order) + len(shapes)
        if folded == 0:
            return PassResult(mod, False, {"bindings_folded": 0})
        new = relax.transform.DeadCodeElimination()(new)
        modified = not _tvm.structural_equal(new, mod)
        return PassResult(new, modified, {"bindings_folded": folded if modified else 0})
