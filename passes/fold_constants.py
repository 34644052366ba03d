"""Evaluate sub-graphs whose inputs are all constants and replace them by their value.

Before:  w2 = R.permute_dims(W, [1, 0]); y = R.matmul(x, w2)      (W a constant)
After:   y = R.matmul(x, W_transposed)                               (folded at compile time)
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.passes._common import apply_tvm_pass, call_count


@register_pass
class FoldConstants(GraphPass):
    """Fold every constant sub-graph (weight transposes, reshapes, casts, shape arithmetic)."""

    name = "fold-constants"

    @dataclass(frozen=True)
    class Options:
        pass

    def run(self, mod: tvm.IRModule) -> PassResult:
        before = call_count(mod)
        result = apply_tvm_pass(mod, relax.transform.FoldConstant())
        folded = before - call_count(result.module)
        return PassResult(result.module, result.modified, {"calls_folded": folded})
