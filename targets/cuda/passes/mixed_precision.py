"""fp16 or bf16 activations and weights with fp32 accumulation (the CUDA target's precision=).

TVM's ToMixedPrecision does the conversion: convs and matmuls take fp16 inputs and accumulate
in fp32 (their outputs cast back to fp16), softmax, layer norm and reductions keep fp32, and
`main` keeps its fp32 inputs and outputs. Imported graphs need two clean-ups first, or it
fails: Clip as `call_tir` maximum / minimum kernels becomes Relax operators again, and
`R.clip` with scalar bounds becomes maximum / minimum with 0-d constants. Unused kernels are
dropped afterwards. Gathers from large constant tables (embeddings), which ToMixedPrecision
leaves in fp32, read a 16-bit copy of the table.

ToMixedPrecision knows only fp16. For bf16 its result is retyped: every cast to fp16 it added
becomes a cast to bf16 (weights stay fp32 constants under a cast until FoldConstant, so they
are rounded once, from fp32), and the types downstream follow. bf16 keeps fp32's range, so
activations that overflow fp16 stay finite; it has 3 fewer mantissa bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx

from graphopt import _tvm
from graphopt.errors import PipelineError
from graphopt.pass_helpers import rewrite_relax_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.scalar_kernels import raise_scalar_elementwise

TABLE_MIN_ELEMENTS = 1 << 16  # gathered constants at least this large are stored 16-bit


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


@relax.expr_functor.mutator
class _HalfTables(relax.PyExprMutator):
    """A gather from a large fp32 constant (an embedding table) reads an fp16 copy of it and
    casts the rows it took back: ToMixedPrecision leaves `take` in fp32, and MiniLM's word
    embeddings are half its weights. Gathering is exact; only the table's rounding changes,
    as for every other weight."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.take"):
            return call
        table = call.args[0]
        if not _tvm.is_constant(table):
            return call
        value = _tvm.constant_value(table)
        if value.dtype != np.float32 or value.size < TABLE_MIN_ELEMENTS:
            return call
        self.count += 1
        half = relax.op.astype(table, "float16")
        axis = call.attrs.axis if call.attrs.axis is None else int(call.attrs.axis)
        rows = relax.op.take(half, call.args[1], axis=axis, mode=str(call.attrs.mode))
        return relax.op.astype(rows, "float32")


@relax.expr_functor.mutator
class _HalfToBfloat16(relax.PyExprMutator):
    """Casts to float16 become casts to bfloat16 (ToMixedPrecision makes no fp16 constants:
    its weights are fp32 constants under a cast)."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.astype"):
            return call
        if str(call.attrs.dtype) != "float16":
            return call
        self.count += 1
        return relax.op.astype(call.args[0], "bfloat16")


@register_pass
class MixedPrecision(GraphPass):
    """fp16 or bf16 convs/matmuls with fp32 accumulation (CUDA precision=fp16|bf16)."""

    name = "mixed-precision"

    @dataclass(frozen=True)
    class Options:
        # Accumulator type of convs and matmuls.
        accumulate: str = "float32"
        # Storage type of weights and activations: float16 | bfloat16.
        dtype: str = "float16"

        def __post_init__(self) -> None:
            if self.dtype not in ("float16", "bfloat16"):
                raise PipelineError(f"mixed-precision: dtype={self.dtype!r} (float16 | bfloat16)")

    def run(self, mod: tvm.IRModule) -> PassResult:
        mod, raised = raise_scalar_elementwise(mod)
        mod, clips = rewrite_relax_functions(mod, _ClipToMinMax)
        before = _count_casts(mod)
        mod = relax.transform.ToMixedPrecision(out_dtype=self.options.accumulate)(mod)
        mod = relax.transform.DeadCodeElimination()(mod)
        mod, tables = rewrite_relax_functions(mod, _HalfTables)
        retyped = 0
        if self.options.dtype == "bfloat16":
            mod, retyped = rewrite_relax_functions(mod, _HalfToBfloat16)
        casts = _count_casts(mod) - before
        stats = {"kernels_raised": raised, "clips_rewritten": clips, "casts_added": casts}
        if tables:
            stats["tables_halved"] = tables
        if retyped:
            stats["bf16_retyped"] = retyped
        return PassResult(mod, casts > 0 or raised > 0 or clips > 0, stats)


def _count_casts(mod: tvm.IRModule) -> int:
    return _tvm.op_counts(mod).get("relax.astype", 0)
