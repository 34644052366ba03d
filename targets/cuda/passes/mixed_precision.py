"""fp16 activations and weights with fp32 accumulation (the CUDA target's precision=fp16).

TVM's ToMixedPrecision does the conversion: convs and matmuls take fp16 inputs and accumulate
in fp32 (their outputs cast back to fp16), softmax, layer norm and reductions keep fp32, and
`main` keeps its fp32 inputs and outputs. Imported graphs need two clean-ups first, or it
fails: Clip as `call_tir` maximum / minimum kernels becomes Relax operators again, and
`R.clip` with scalar bounds becomes maximum / minimum with 0-d constants. Unused kernels are
dropped afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax, tirx

from graphopt.pass_helpers import rewrite_relax_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.scalar_kernels import raise_scalar_elementwise


@relax.expr_functor.mutator
class _ClipToMinMax(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.clip"):
            return call
        x, low, high = call.args
        dtype = x.ty.dtype
        scalars = (tirx.IntImm, tirx.FloatImm)
        if not (isinstance(low, scalars) and isinstance(high, scalars)):
            return call
        self.count += 1
        lower = relax.op.maximum(x, relax.const(float(low.value), dtype))
        return relax.op.minimum(lower, relax.const(float(high.value), dtype))


@register_pass
class MixedPrecision(GraphPass):
    """fp16 convs/matmuls with fp32 accumulation (CUDA precision=fp16)."""

    name = "mixed-precision"

    @dataclass(frozen=True)
    class Options:
        # Accumulator type of convs and matmuls.
        accumulate: str = "float32"

    def run(self, mod: tvm.IRModule) -> PassResult:
        mod, raised = raise_scalar_elementwise(mod)
        mod, clips = rewrite_relax_functions(mod, _ClipToMinMax)
        before = _count_casts(mod)
        mod = relax.transform.ToMixedPrecision(out_dtype=self.options.accumulate)(mod)
        mod = relax.transform.DeadCodeElimination()(mod)
        casts = _count_casts(mod) - before
        stats = {"kernels_raised": raised, "clips_rewritten": clips, "casts_added": casts}
        return PassResult(mod, casts > 0 or raised > 0 or clips > 0, stats)


def _count_casts(mod: tvm.IRModule) -> int:
    from graphopt import _tvm

    return _tvm.op_counts(mod).get("relax.astype", 0)
