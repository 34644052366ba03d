"""Common sub-expression elimination: compute each identical expression once.

Before:  a = R.exp(x); b = R.exp(x); c = R.add(a, b)
After:   a = R.exp(x); c = R.add(a, a)
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt.pass_helpers import apply_tvm_pass, call_count
from graphopt.pass_infra import GraphPass, PassResult, register_pass


@register_pass
class CommonSubexprElimination(GraphPass):
    """Common sub-expression elimination (pure calls computed once, then reused)."""

    name = "cse"

    def run(self, mod: tvm.IRModule) -> PassResult:
        before = call_count(mod)
        seq = tvm.transform.Sequential(
            [relax.transform.EliminateCommonSubexpr(), relax.transform.DeadCodeElimination()]
        )
        result = apply_tvm_pass(mod, seq)
        return PassResult(
            result.module, result.modified, {"calls_removed": before - call_count(result.module)}
        )
