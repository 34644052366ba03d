"""Legalize chosen fp32 Relax calls to TOPI's vectorizable approximations, ahead of LegalizeOps.

LLVM on x86 and aarch64 has no vector math library here: `exp` and `erf` in a kernel become one
scalar libm call per element, which then dominates kernels that are otherwise vectorized (a
GELU epilogue, a softmax row). The fast-* passes replace just those calls with TOPI's polynomial
versions (plain arithmetic that vectorizes); every other call is left to `tvm.LegalizeOps`.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax

from graphopt.pass_helpers import rewrite_relax_functions

# op name -> (builder, kernel name hint); the builder gets the block builder and the call and
# returns the replacement expression (usually a call_te).
Legalizer = Callable[[relax.BlockBuilder, relax.Call], relax.Expr]


def _is_fp32(expr) -> bool:
    return str(getattr(expr.ty, "dtype", "")) == "float32"


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, table: dict[str, Legalizer]) -> None:
        super().__init__(mod)
        self.table = table
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = call.op
        if isinstance(op, tvm.ir.Op) and op.name in self.table and _is_fp32(call.args[0]):
            self.count += 1
            return self.table[op.name](self.builder_, call)
        return call


def legalize_fp32_calls(mod: tvm.IRModule, table: dict[str, Legalizer]) -> tuple[tvm.IRModule, int]:
    """Every fp32 call to an op in `table`, in every Relax function, replaced by its builder."""
    return rewrite_relax_functions(mod, lambda m: _Rewriter(m, table))
