"""Fold inference batch-norm into the preceding convolution, or decompose it into mul/add.

Before:  c = R.nn.conv2d(x, W); b = R.nn.batch_norm(c, g, beta, mean, var)[0]
After:   c = R.nn.conv2d(x, W * s); b = R.add(c, beta - mean * s)   (s = g / sqrt(var + eps))

Batch-norms that cannot be folded are decomposed to per-channel multiply and add, which the
target's fusion then merges into the producer's kernel.
"""

from __future__ import annotations

import tvm
from graphopt.passes._common import apply_tvm_pass, call_count
from tvm import relax

from graphopt.pass_infra import GraphPass, PassResult, register_pass

_BN = "relax.nn.batch_norm"


@register_pass
class FoldBatchnorm(GraphPass):
    """Fold inference batch-norm into conv2d weights; decompose the rest into mul/add."""

    name = "fold-batchnorm"

    def run(self, mod: tvm.IRModule) -> PassResult:
        before = call_count(mod, _BN)
        folded = relax.transform.FoldBatchnormToConv2D()(mod)
        into_conv = before - call_count(folded, _BN)
        result = apply_tvm_pass(
            mod,
            tvm.transform.Sequential(
                [
                    relax.transform.FoldBatchnormToConv2D(),
                    relax.transform.DecomposeOpsForInference(),
                ]
            ),
        )
        return PassResult(
            result.module,
            result.modified,
            {"folded_into_conv": into_conv, "decomposed": before - into_conv},
        )
