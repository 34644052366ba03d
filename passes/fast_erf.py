"""Legalize fp32 erf and GELU to a polynomial that vectorizes, ahead of LegalizeOps.

`tvm.LegalizeOps` turns `relax.erf` and `relax.nn.gelu` into `topi.erf`, which LLVM emits as
one scalar libm `erff` call per element: the GELU epilogue of a 197x3072 matmul then takes
longer than the matmul itself. This pass legalizes just those calls (fp32 only) with
`topi.fast_erf`, Eigen's rational polynomial of plain arithmetic, which vectorizes with the rest
of the fused epilogue; max abs error 4.4e-7 against libm's 4.9e-8 (erf is bounded by 1).
Every other call is left to `tvm.LegalizeOps`, which runs next.

    before:  y = R.nn.gelu(x)
    after:   y = R.call_tir(gelu, (x,))   # x * (0.5 + fast_erf(x * 0.7071) * 0.5)

Counter: `fast_erf` (calls legalized). Belongs in a CPU target's legalize stage, right before
`tvm.LegalizeOps`.
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt.pass_infra import GraphPass, PassResult, register_pass


def _fast_erf(x):
    from tvm import topi

    return topi.fast_erf(x)


def _gelu(x):
    from tvm import tirx

    half = tirx.const(0.5, x.dtype)
    return x * (half + _fast_erf(x * tirx.const(0.5**0.5, x.dtype)) * half)


_LEGALIZE = {"relax.erf": (_fast_erf, "erf"), "relax.nn.gelu": (_gelu, "gelu")}


def _is_fp32(expr) -> bool:
    return str(getattr(expr.ty, "dtype", "")) == "float32"


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = call.op
        if isinstance(op, tvm.ir.Op) and op.name in _LEGALIZE and _is_fp32(call.args[0]):
            fn, hint = _LEGALIZE[op.name]
            self.count += 1
            return self.builder_.call_te(fn, call.args[0], primfunc_name_hint=hint)
        return call


@register_pass
class FastErf(GraphPass):
    """fp32 erf / GELU legalized to a vectorizable polynomial (topi.fast_erf)."""

    name = "fast-erf"

    def run(self, mod: tvm.IRModule) -> PassResult:
        new = mod
        count = 0
        for gvar, func in mod.functions.items():
            if not isinstance(func, relax.Function):
                continue
            rewriter = _Rewriter(new)
            rewritten = rewriter.visit_expr(func)
            if not rewriter.count:
                continue
            count += rewriter.count
            new = rewriter.builder_.get()
            new[gvar] = rewritten
        return PassResult(new, count > 0, {"fast_erf": count})
