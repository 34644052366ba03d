"""Algebraic identities and no-op removal: x * 1, -(-x), same-dtype casts, reshape/transpose chains.

Before:  a = R.multiply(x, R.const(1.0)); b = R.permute_dims(a, [0, 2, 1])
         c = R.permute_dims(b, [0, 2, 1]); d = R.reshape(c, (2, 12)); y = R.reshape(d, (6, 4))
After:   y = R.reshape(x, (6, 4))

Rewrites (each counter in `stats` counts rewritten bindings):
- identities: `x * 1`, `1 * x`, `x + 0`, `0 + x`, `x - 0`, `x / 1` with an all-ones / all-zeros
  constant that does not change x's shape or dtype by broadcasting, and `-(-x)`. (`x + 0` would
  turn -0.0 into +0.0: the sign of a zero is not kept.)
- casts_removed: `astype` to the dtype x already has.
- reshapes_removed / reshapes_merged: reshape, expand_dims, squeeze and flatten only relabel
  row-major data, so one whose result has its input's shape is dropped, and one applied to
  another becomes a single reshape of the first one's input (dropped too if that cancels, e.g.
  `squeeze(expand_dims(x, 1), 1)`).
- transposes_removed / transposes_merged: identity `permute_dims`, and two consecutive
  `permute_dims` composed into one (dropped when the composition is the identity).
- broadcasts_removed: `broadcast_to` x's own shape.
- dropouts_removed: `R.nn.dropout(x)[0]` (what TVM's importer makes of ONNX Dropout).

ONNX `Identity` never reaches Relax: TVM's importer maps its output to its input. ONNX `Dropout`
imports as `R.nn.dropout`, but graphopt's import clean-up (onnxscript's folder) already removes
it, as it does same-dtype Casts; this pass handles them for modules that come from elsewhere.
Shapes are compared dimension by dimension (symbolic dims must be provably equal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_infra import GraphPass, PassResult, register_pass

_STATS = (
    "identities",
    "casts_removed",
    "reshapes_removed",
    "reshapes_merged",
    "transposes_removed",
    "transposes_merged",
    "broadcasts_removed",
    "dropouts_removed",
)
# Fused kernels and offloaded regions keep their exact signature and body.
_SKIP_ATTRS = {"Primitive", "Composite", "Codegen"}
_RESHAPES = {"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"}
# op -> (neutral constant, argument positions the constant may take)
_NEUTRAL = {
    "relax.add": (0, (0, 1)),
    "relax.multiply": (1, (0, 1)),
    "relax.subtract": (0, (1,)),
    "relax.divide": (1, (1,)),
}


def _op_name(expr: relax.Expr) -> str:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return ""


def _dims(expr: relax.Expr) -> list | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    values = getattr(ty.shape, "values", None)
    return None if values is None else list(values)


def _attr_names(func: relax.Function) -> set[str]:
    return set(func.attrs.keys()) if func.attrs is not None else set()


@relax.expr_functor.mutator
class _Simplifier(relax.PyExprMutator):
    """Rewrites bindings in post order, so each sees its producers already simplified."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.stats = dict.fromkeys(_STATS, 0)
        self.analyzer = tvm.sym.Analyzer()  # tvm.arith moved to tvm.sym in 0.27

    # -- helpers -----------------------------------------------------------------------------

    def _producer(self, expr: relax.Expr) -> relax.Expr | None:
        """The value bound to a var (None for parameters and non-vars)."""
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _same_type(self, a: relax.Expr, b: relax.Expr) -> bool:
        """Same dtype and provably the same shape (so replacing one by the other is a no-op)."""
        return self._equal_dims(_dims(a), _dims(b)) and a.ty.dtype == b.ty.dtype

    def _equal_dims(self, da: list | None, db: list | None) -> bool:
        if da is None or db is None or len(da) != len(db):
            return False
        return all(self.analyzer.can_prove_equal(x, y) for x, y in zip(da, db))

    def _const(self, expr: relax.Expr) -> np.ndarray | None:
        if isinstance(expr, relax.Var):
            expr = self._producer(expr)
        return _tvm.constant_value(expr) if isinstance(expr, tvm.ir.GenericConst) else None

    # -- rules: each returns the replacement, or None to keep the call -------------------------

    def _arith(self, call: relax.Call, op: str) -> relax.Expr | None:
        neutral, positions = _NEUTRAL[op]
        for pos in positions:
            value, other = self._const(call.args[pos]), call.args[1 - pos]
            if value is not None and np.all(value == neutral) and self._same_type(other, call):
                return other
        return None

    def _reshape(self, call: relax.Call) -> tuple[str, relax.Expr] | None:
        data = call.args[0]
        if self._same_type(data, call):
            return "reshapes_removed", data
        inner = self._producer(data)
        if _op_name(inner) not in _RESHAPES:
            return None
        src = inner.args[0]
        if self._same_type(src, call):
            return "reshapes_removed", src
        dims = _dims(call)
        if dims is None:
            return None
        shape = relax.ShapeExpr(dims)
        merged = relax.op.reshape(src, shape)
        # relax.op.reshape reads a literal 0 as "copy that input dim": keep only exact targets.
        if not self._equal_dims(list(merged.args[1].values), dims):
            return None
        return "reshapes_merged", merged

    def _axes(self, call: relax.Call) -> list[int] | None:
        dims = _dims(call.args[0])
        if dims is None:
            return None
        ndim = len(dims)
        axes = call.attrs.axes
        if axes is None:
            return list(range(ndim))[::-1]
        return [int(a) % ndim for a in axes]

    def _transpose(self, call: relax.Call) -> tuple[str, relax.Expr] | None:
        axes = self._axes(call)
        if axes is None:
            return None
        if axes == sorted(axes):
            return "transposes_removed", call.args[0]
        inner = self._producer(call.args[0])
        if _op_name(inner) != "relax.permute_dims":
            return None
        inner_axes = self._axes(inner)
        if inner_axes is None:
            return None
        composed = [inner_axes[a] for a in axes]  # out[i] = inner_in[inner_axes[axes[i]]]
        if composed == sorted(composed):
            return "transposes_removed", inner.args[0]
        return "transposes_merged", relax.op.permute_dims(inner.args[0], composed)

    def _rewrite(self, value: relax.Expr) -> tuple[str, relax.Expr] | None:
        if isinstance(value, relax.TupleGetItem):
            inner = self._producer(value.tuple_value)
            if value.index == 0 and _op_name(inner) == "relax.nn.dropout":
                return "dropouts_removed", inner.args[0]
            return None
        op = _op_name(value)
        if op in _NEUTRAL:
            out = self._arith(value, op)
            return None if out is None else ("identities", out)
        if op == "relax.negative":
            inner = self._producer(value.args[0])
            if _op_name(inner) == "relax.negative":
                return "identities", inner.args[0]
        elif op == "relax.astype":
            if self._same_type(value.args[0], value):
                return "casts_removed", value.args[0]
        elif op == "relax.broadcast_to":
            if self._same_type(value.args[0], value):
                return "broadcasts_removed", value.args[0]
        elif op in _RESHAPES:
            return self._reshape(value)
        elif op == "relax.permute_dims":
            return self._transpose(value)
        return None

    # -- binding visitor -------------------------------------------------------------------------

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        rewrite = self._rewrite(value)
        if rewrite is None:
            self._emit(binding.var, value)
            return
        kind, new = rewrite
        self.stats[kind] += 1
        dataflow_only = isinstance(new, relax.DataflowVar)
        if isinstance(new, relax.Var) and (
            isinstance(binding.var, relax.DataflowVar) or not dataflow_only
        ):
            self.set_var_remap(binding.var, new)  # every use of the var now reads `new`
            return
        # A block output cannot name a dataflow var outside the block: keep `gv = new`
        # (CanonicalizeBindings then gives the producer the output's name).
        self._emit(binding.var, self.builder_.normalize(new))

    def _emit(self, var: relax.Var, value: relax.Expr) -> None:
        new_var = self.visit_var_def(var)
        if not _tvm.structural_equal(new_var.ty, value.ty):
            new_var = self.with_type(new_var, value.ty)
        if not new_var.same_as(var):
            self.set_var_remap(var, new_var)
        self.builder_.emit_normalized(relax.VarBinding(new_var, value))


@register_pass
class Simplify(GraphPass):
    """Remove no-ops (x*1, x+0, -(-x), same-dtype casts, dropout), fold reshape/transpose chains."""

    name = "simplify"

    @dataclass(frozen=True)
    class Options:
        """No options: every rewrite is exact up to the sign of a zero."""

    def run(self, mod: tvm.IRModule) -> PassResult:
        simplifier = _Simplifier(mod)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function) and not _SKIP_ATTRS & _attr_names(func):
                simplifier.builder_.update_func(gvar, simplifier.visit_expr(func))
        stats = dict(simplifier.stats)
        if not any(stats.values()):
            return PassResult(mod, False, stats)
        new = simplifier.builder_.get()
        cleanup = [relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()]
        new = tvm.transform.Sequential(cleanup)(new)
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)
