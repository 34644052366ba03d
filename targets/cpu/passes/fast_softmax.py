"""Legalize fp32 softmax with a vectorizable exp, ahead of LegalizeOps.

`tvm.LegalizeOps` turns `relax.nn.softmax` into `topi.nn.softmax`, whose `exp` LLVM emits as one
scalar libm `expf` call per element: in MiniLM the attention softmax (12 x 128 x 128 per layer)
was about a third of the int8 model's time. This pass legalizes fp32 softmax with
`topi.nn.fast_softmax` instead: the same max-subtracted form, with TVM's `fast_exp` (range
reduction plus a degree-7 polynomial, plain arithmetic that vectorizes; relative error ~1e-7,
inputs below -88.4 clamp to exp(-88.4) ~ 4e-39 instead of 0).

    before:  y = R.nn.softmax(x, axis=-1)
    after:   y = R.call_tir(softmax, (x,))   # fast_exp(x - max) / sum(fast_exp(x - max))

Counter: `fast_softmax` (calls legalized). Belongs in a CPU target's legalize stage, right
before `tvm.LegalizeOps` (`--target-opt fast_softmax=false` turns it off).
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cpu.passes._fast_legalize import legalize_fp32_calls


def _softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    from tvm import topi

    axis = int(call.attrs.axis)
    return bb.call_te(topi.nn.fast_softmax, call.args[0], axis, primfunc_name_hint="softmax")


@register_pass
class FastSoftmax(GraphPass):
    """fp32 softmax legalized with a vectorizable exp (topi.nn.fast_softmax)."""

    name = "fast-softmax"

    def run(self, mod: tvm.IRModule) -> PassResult:
        new, count = legalize_fp32_calls(mod, {"relax.nn.softmax": _softmax})
        return PassResult(new, count > 0, {"fast_softmax": count})
