"""Build the int8 ops of `lower-int8` as GPU kernels, constants packed for them.

The CUDA counterpart of the CPU's `materialize-int8`: first in the CUDA schedule stage, it
replaces every portable int8 kernel (plain scalar TIR marked scheduled, which a GPU cannot run)
by unscheduled GPU kernels (`targets/cuda/int8/`) that `schedule-cuda` then schedules: convs
and matmuls as int8 GEMMs for the `int8-dp4a` rule, depthwise convs for `window`, residual adds
for `elementwise`, the row scales of dynamic matmuls for dlight's reductions. Each call's
constants are packed at compile time; reshapes around a call (matmul rows, conv outputs) are
views. The graph's own quantize kernels divide in IEEE arithmetic (`int8/exact_quantize.py`),
so int8 tensors are the CPU's from the first quantize on. Retargeting an int8 graph from a CPU
to a GPU is running this stage on the same lowered module.
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt.int8_ops import recipe_of
from graphopt.kernel_swap import packed_constants, portable_entry, swap_kernels
from graphopt.pass_helpers import with_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cuda.int8 import materialize as M
from graphopt.targets.cuda.int8.exact_quantize import exact_quantize_kernels

_CONSTANTS = {"conv2d": 4, "matmul": 4, "add": 0}
_INPUTS = {"conv2d": 1, "matmul": 1, "add": 2}


@register_pass
class MaterializeInt8Cuda(GraphPass):
    """Portable int8 kernels -> GPU kernels (dp4a GEMMs, windows), constants packed."""

    name = "materialize-int8-cuda"

    def run(self, mod: tvm.IRModule) -> PassResult:
        stats = {"kernels": 0, "calls": 0, "already_built": 0}
        built = {}
        for gvar, func in mod.functions.items():
            recipe = recipe_of(func)
            if recipe is None:
                continue
            if recipe.isa is not None:
                stats["already_built"] += 1
                continue
            built[gvar] = (recipe, M.build(recipe))
        stats["kernels"] = len(built)
        new = mod
        if built:
            mutator = _Materialize(mod, built)
            new = swap_kernels(mod, built, mutator)
            stats["calls"] = mutator.calls
        exact = exact_quantize_kernels(new)
        stats["exact_quantize"] = len(exact)
        if not built and not exact:
            return PassResult(mod, False, stats)
        return PassResult(with_functions(new, exact), True, stats)


@relax.expr_functor.mutator
class _Materialize(relax.PyExprMutator):
    """Points the calls of portable kernels at the GPU kernels, constants packed."""

    def __init__(self, mod: tvm.IRModule, built: dict) -> None:
        super().__init__(mod)
        self.built = built
        self.kernel = {}
        self.row_scale = {}
        for gvar, (_recipe, b) in built.items():
            self.kernel[gvar] = self.builder_.add_func(b.kernel, gvar.name_hint)
            if b.row_scale is not None:
                name = f"{gvar.name_hint}_row_scale"
                self.row_scale[gvar] = self.builder_.add_func(b.row_scale, name)
        self.calls = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        entry = portable_entry(call, self.built)
        if entry is None:
            return call
        recipe, b = entry
        gvar = call.args[0]
        args = list(call.args[1].fields)
        first, count = _INPUTS[recipe.kind], _CONSTANTS[recipe.kind]
        consts = args[first : first + count]
        packed = packed_constants("materialize-int8-cuda", call, consts, b.pack)
        args[first : first + count] = packed
        if b.x_shape is not None:
            args[0] = self._view(args[0], b.x_shape)
        if gvar in self.row_scale:  # the matmul's xs operand: the rows' scales
            rows = relax.TensorType(relax.ShapeExpr([b.x_shape[0]]), "float32")
            args[-1] = self.builder_.emit(relax.call_tir(self.row_scale[gvar], [args[0]], rows))
        self.calls += 1
        out_ty = relax.TensorType(relax.ShapeExpr(list(b.out_shape)), call.ty.dtype)
        out = relax.call_tir(self.kernel[gvar], relax.Tuple(args), out_ty)
        if tuple(b.out_shape) == tuple(int(d) for d in call.ty.shape):
            return out
        return relax.op.reshape(self.builder_.emit(out), call.ty.shape)

    def _view(self, expr: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
        if tuple(int(d) for d in expr.ty.shape) == tuple(shape):
            return expr
        return self.builder_.emit(relax.op.reshape(expr, list(shape)))
