"""Matmuls with constant fp32 weights -> 16-bit (bf16 or fp16) weight matmul ops.

Each `matmul(x, W)` (x fp32 [.., K] of static shape, W a constant [K, N]: the matmul layers of
`compress/common/layers.py`) not in `skip` becomes one `call_tir` of the 16-bit matmul op
(`graphopt.precision_ops`): W is stored as its 16-bit bit patterns (uint16 [K, N], rounded to
nearest even), the op rounds x to the same format and sums the exact products in fp32. The
fp32 weight leaves the graph, so the artifact stores half its bytes.

The kernel emitted is the portable one (`graphopt.precision_ops.portable_kernel`, carrying its
spec); a target stage (`materialize-precision`) replaces it with a kernel for its instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from graphopt.compress.common.layers import find_layers
from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_ops import PRECISIONS, PrecisionMatmulSpec, portable_kernel, to_bits


@register_pass
class LowerPrecision(GraphPass):
    """Constant-weight matmuls -> 16-bit weight ops (bf16 / fp16 weights, fp32 sums)."""

    name = "lower-precision"

    @dataclass(frozen=True)
    class Options:
        precision: str = "bf16"  # bf16 | fp16
        skip: str = ""  # ":"-separated layer names kept fp32

    def run(self, mod: tvm.IRModule) -> PassResult:
        o = self.options
        if o.precision not in PRECISIONS:
            raise PipelineError(
                f"lower-precision: precision must be one of {', '.join(PRECISIONS)}, "
                f"not {o.precision!r}"
            )
        skip = set(filter(None, o.skip.split(":")))
        todo = {
            ly.var: ly
            for ly in find_layers(mod["main"])
            if ly.kind == "matmul" and ly.name not in skip and _static(ly.data)
        }
        stats = {"matmuls": len(todo)}
        if not todo:
            return PassResult(mod, False, stats)
        rewriter = _Rewriter(mod, todo, o.precision)
        new_func = rewriter.visit_expr(mod["main"])
        new = rewriter.builder_.get()
        new["main"] = relax.analysis.remove_all_unused(new_func)
        new = relax.transform.DeadCodeElimination()(new)
        return PassResult(new, True, stats)


def _static(expr: relax.Expr) -> bool:
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    return values is not None and all(isinstance(v, tvm.tirx.IntImm) for v in values)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces each planned matmul binding by the 16-bit op."""

    def __init__(self, mod: tvm.IRModule, todo: dict, precision: str) -> None:
        super().__init__(mod)
        self.todo, self.precision = todo, precision
        self.kernels: dict[PrecisionMatmulSpec, relax.GlobalVar] = {}

    def _kernel(self, spec: PrecisionMatmulSpec) -> relax.GlobalVar:
        if spec not in self.kernels:
            self.kernels[spec] = self.builder_.add_func(portable_kernel(spec), "matmul16")
        return self.kernels[spec]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.todo:
            super().visit_var_binding_(binding)
            return
        layer = self.todo[binding.var]
        x = self.visit_expr(layer.call.args[0])
        shape = tuple(int(d) for d in layer.call.args[0].ty.shape.values)
        w = layer.weight
        spec = PrecisionMatmulSpec(shape, int(w.shape[1]), self.precision)
        ty = binding.var.ty
        call = relax.call_tir(
            self._kernel(spec),
            relax.Tuple([x, relax.const(to_bits(w, self.precision))]),
            relax.TensorType(ty.shape, ty.dtype),
        )
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))
