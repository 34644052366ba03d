"""Remove bindings and functions whose results are never used.

Before:  a = R.add(x, y); b = R.multiply(x, y); return a
After:   a = R.add(x, y); return a
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt.pass_helpers import apply_tvm_pass, call_count
from graphopt.pass_infra import GraphPass, PassResult, register_pass


@register_pass
class DeadCodeElimination(GraphPass):
    """Dead code elimination: drop unused bindings and unreachable functions."""

    name = "dce"

    def run(self, mod: tvm.IRModule) -> PassResult:
        before = call_count(mod)
        result = apply_tvm_pass(mod, relax.transform.DeadCodeElimination())
        return PassResult(
            result.module, result.modified, {"calls_removed": before - call_count(result.module)}
        )
