"""Move activation transposes below elementwise ops, so a transpose pair meets and cancels.

Before:  a = permute_dims(x, [0, 3, 1, 2]); b = add(a, c [1, C, 1, 1]); d = clip(b, 0, 6)
         e = permute_dims(d, [0, 2, 3, 1]); y = some_op(e)
After:   b' = add(x, c' [1, 1, 1, C]); d' = clip(b', 0, 6); y = some_op(d')

An elementwise op (add, subtract, multiply, divide, maximum, minimum, clip, relu, and the ONNX
importer's one-block max / min kernels of its Clip, as the Relax ops) whose tensor operands
are all the same transpose of other tensors, or constants of the same rank (permuted here) or
scalars, is computed before the transpose: `op(P(x), P(z), c) = P(op(x, z, P^-1(c)))`,
exact (same numbers, other order in memory). A reduction (mean, sum, max, min) of such a
tensor reduces the matching axes of the untransposed one, `mean(P(x), A) = P'(mean(x, P(A)))`
(P' the transpose of the axes left), when P keeps the reduced axes in their order (so each
output sums its inputs in the same order: same numbers). A reshape of P(x) where P moves only
unit axes (the same elements in the same memory order) is a reshape of x. A transpose of such a
result then composes with the one carried along: the identity drops, anything else is one
transpose. The original
bindings stay for any other consumer (dead ones are removed), so the pass never adds work
where it cannot cancel: an op is computed twice only if both layouts are used.

Where it matters: `lower-precision`'s pointwise convs are matmuls over the channel axis
wrapped in NHWC <-> NCHW transposes; after x86's `layout` stage their bias adds, activations
and residual adds sit between a transpose back to NCHW and the next one to NHWC; the last one
before a global average pool (`mean` over H, W, then a reshape to [N, C]) pools in NHWC, so no
transpose of the whole map is left and `fuse-precision-epilogue` folds its bias and clip.
Counters: `ops_sunk` (elementwise ops computed in the other layout), `transposes_removed`
(transposes that composed to the identity, including identity transposes already there, and
transposes a reshape or a reduction made unneeded), `reductions_sunk` (reductions computed on
the untransposed tensor).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt import _tvm
from graphopt.binding_graph import minmax_kernel
from graphopt.pass_helpers import rewrite_relax_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass

REDUCTIONS = {"relax.mean": R.mean, "relax.sum": R.sum, "relax.max": R.max, "relax.min": R.min}
ELEMENTWISE = {
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.clip", "relax.nn.relu",
}  # fmt: skip


@register_pass
class SinkTransposes(GraphPass):
    """Elementwise ops computed before a transpose, so transpose pairs cancel."""

    name = "sink-transposes"

    def run(self, mod: tvm.IRModule) -> PassResult:
        stats = {"ops_sunk": 0, "transposes_removed": 0, "reductions_sunk": 0}

        def sinker(module: tvm.IRModule) -> _Sink:
            return _Sink(module, stats)

        new, _count = rewrite_relax_functions(mod, sinker, finish=relax.analysis.remove_all_unused)
        new = relax.transform.DeadCodeElimination()(new) if new is not mod else mod
        if new is mod or _tvm.structural_equal(new, mod):  # the sunk copies were all dead
            return PassResult(mod, False, dict.fromkeys(stats, 0))
        return PassResult(new, True, stats)


def _axes(call: relax.Expr) -> list[int] | None:
    """The axes of a permute_dims call (None: not one)."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
        return None
    if call.op.name != "relax.permute_dims":
        return None
    if call.attrs.axes is None:
        return list(range(call.ty.ndim))[::-1]
    return [int(a) for a in call.attrs.axes]


def _op(value: relax.Expr) -> str | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def _unit_axes(expr: relax.Expr) -> set[int] | None:
    """The axes of `expr`'s shape known to be 1 (None: no shape)."""
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None:
        return None
    return {i for i, d in enumerate(shape) if isinstance(d, tvm.tirx.IntImm) and int(d) == 1}


@relax.expr_functor.mutator
class _Sink(relax.PyExprMutator):
    """Carries, per variable, the tensor it is a transpose of (`lazy`: var -> (source, axes))."""

    def __init__(self, mod: tvm.IRModule, stats: dict) -> None:
        super().__init__(mod)
        self.lazy: dict = {}
        self.consts: dict = {}  # variables bound to constants
        self.stats = stats
        self.count = 0  # rewrites (rewrite_relax_functions keeps a function only if any)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if isinstance(value, tvm.ir.GenericConst):
            self.consts[binding.var] = value
        axes = _axes(value)
        if axes is not None:
            if self._transpose(binding, value, axes):
                return
        elif self._elementwise(binding, value) or self._reduction(binding, value):
            return
        elif self._reshape(binding, value):
            return
        super().visit_var_binding_(binding)

    def _transpose(self, binding, value: relax.Call, axes: list[int]) -> bool:
        src = self.visit_expr(value.args[0])
        source, inner = self.lazy.get(value.args[0], (src, list(range(len(axes)))))
        composed = [inner[a] for a in axes]
        if composed == list(range(len(axes))):  # the identity: the source itself
            self._counted("transposes_removed")
            self.builder_.emit_normalized(relax.VarBinding(binding.var, source))
            return True
        self.lazy[binding.var] = (source, composed)
        if source is not src:  # one transpose of the source instead of two
            call = R.permute_dims(source, composed)
            self.builder_.emit_normalized(
                relax.VarBinding(binding.var, self.builder_.normalize(call))
            )
            return True
        return False

    def _counted(self, stat: str) -> None:
        self.stats[stat] += 1
        self.count += 1

    def _elementwise(self, binding, value) -> bool:
        found = self._elementwise_op(value)
        if found is None:
            return False
        make, operands = found
        ndim = binding.var.ty.ndim
        tensors = [a for a in operands if a in self.lazy]
        if not tensors:
            return False
        axes = self.lazy[tensors[0]][1]
        args = []
        for a in operands:
            moved = self._operand(a, axes, ndim)
            if moved is None:
                return False
            args.append(moved)
        super().visit_var_binding_(binding)  # the original stays for other consumers
        inner = self.builder_.emit(make(args))
        self.lazy[binding.var] = (inner, axes)
        self._counted("ops_sunk")
        return True

    def _elementwise_op(self, value):
        """(args -> the op on them, its operands) for an elementwise op: a Relax one, or the
        ONNX importer's one-block max / min kernel (its Clip) with a scalar, as the Relax op."""
        if _op(value) in ELEMENTWISE:
            return lambda args: relax.Call(value.op, args, value.attrs, value.ty_args), value.args
        if _op(value) != "relax.call_tir" or not isinstance(value.args[0], tvm.ir.GlobalVar):
            return None
        kind = minmax_kernel(self.builder_.get()[value.args[0]])
        operands = list(value.args[1].fields) if isinstance(value.args[1], relax.Tuple) else []
        if kind is None or len(operands) != 2:  # symbolic sizes come as more operands
            return None
        scalar = self.consts.get(operands[1], operands[1])
        if not isinstance(scalar, tvm.ir.GenericConst) or _tvm.constant_value(scalar).ndim:
            return None
        op = R.maximum if kind == "max" else R.minimum
        return (lambda args: op(*args)), operands

    def _reduction(self, binding, value) -> bool:
        """A reduction of a transposed tensor, computed on its source (see the module doc)."""
        if _op(value) not in REDUCTIONS or value.args[0] not in self.lazy:
            return False
        source, axes = self.lazy[value.args[0]]
        ndim = len(axes)
        reduced = range(ndim) if value.attrs.axis is None else value.attrs.axis
        reduced = sorted(int(a) % ndim for a in reduced)
        src_axes = [axes[a] for a in reduced]
        if src_axes != sorted(src_axes):  # another summation order: not the same numbers
            return False
        keep = value.attrs.keepdims
        inner = self.builder_.emit(REDUCTIONS[_op(value)](source, src_axes, keep))
        left = [a for a in range(ndim) if a not in reduced]
        kept = sorted(a for a in range(ndim) if a not in src_axes)
        new_axes = axes if keep else [kept.index(axes[a]) for a in left]
        self.stats["reductions_sunk"] += 1
        if new_axes == sorted(new_axes):
            self._counted("transposes_removed")
            self.builder_.emit_normalized(relax.VarBinding(binding.var, inner))
            return True
        super().visit_var_binding_(binding)  # the original stays for other consumers
        self.lazy[binding.var] = (inner, new_axes)
        self.count += 1
        return True

    def _reshape(self, binding, value) -> bool:
        """A reshape of P(x) where P moves only unit axes is a reshape of x."""
        if _op(value) != "relax.reshape" or value.args[0] not in self.lazy:
            return False
        source, axes = self.lazy[value.args[0]]
        units = _unit_axes(source)
        if units is None:
            return False
        moved = [a for a in axes if a not in units]  # a symbolic dim counts as not 1
        if moved != sorted(moved):
            return False
        self._counted("transposes_removed")
        call = R.reshape(source, value.args[1])
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))
        return True

    def _operand(self, arg: relax.Expr, axes: list[int], ndim: int):
        """`arg` in the untransposed layout, or None when it cannot be."""
        if arg in self.lazy:
            source, its = self.lazy[arg]
            return source if its == axes else None
        arg = self.consts.get(arg, arg)
        if isinstance(arg, tvm.ir.GenericConst):
            data = _tvm.constant_value(arg)
            if data.ndim == 0:
                return arg
            if data.ndim != ndim:
                return None
            return relax.const(np.ascontiguousarray(np.transpose(data, np.argsort(axes))))
        return (
            arg if isinstance(arg, (tvm.tirx.FloatImm, tvm.tirx.IntImm)) else None
        )  # clip's bounds
