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
`tvm.LegalizeOps`. The shared rewriter is `passes/_fast_legalize.py`.
"""

from __future__ import annotations

import tvm

from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.targets.cpu.passes._fast_legalize import legalize_fp32_calls


def _fast_erf(x):
    from tvm import topi

    return topi.fast_erf(x)


def _gelu(x):
    from tvm import tirx

    half = tirx.const(0.5, x.dtype)
    return x * (half + _fast_erf(x * tirx.const(0.5**0.5, x.dtype)) * half)


_LEGALIZE = {
    "relax.erf": lambda bb, call: bb.call_te(_fast_erf, call.args[0], primfunc_name_hint="erf"),
    "relax.nn.gelu": lambda bb, call: bb.call_te(_gelu, call.args[0], primfunc_name_hint="gelu"),
}


@register_pass
class FastErf(GraphPass):
    """fp32 erf / GELU legalized to a vectorizable polynomial (topi.fast_erf)."""

    name = "fast-erf"

    def run(self, mod: tvm.IRModule) -> PassResult:
        new, count = legalize_fp32_calls(mod, _LEGALIZE)
        return PassResult(new, count > 0, {"fast_erf": count})
