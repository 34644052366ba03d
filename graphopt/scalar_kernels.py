"""The importer's scalar elementwise kernels (Clip as `call_tir` maximum / minimum with a 0-d
constant) back to Relax operators, recognized by their TIR structure, not their names.

Relax passes cannot see through such `call_tir` calls: the `layout` pass would leave them in
NCHW between NHWC convs, and TVM's ToMixedPrecision cannot type them ("Expected TensorType,
but got R.Callable"); as Relax operators they convert like the rest of the graph. Used by the
`layout` pass and the CUDA target's `mixed-precision`.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from . import _tvm
from .pass_helpers import rewrite_relax_functions

_TIR_TO_RELAX = {
    tirx.Max: relax.op.maximum,
    tirx.Min: relax.op.minimum,
    tirx.Add: relax.op.add,
    tirx.Mul: relax.op.multiply,
}


def scalar_elementwise(func) -> object | None:
    """The Relax op of `out[i..] = op(x[i..], s[()])` (either order), else None: one store
    indexed by the block's own iterators, of one max / min / add / multiply of a load of the
    first parameter at those indices and a load of a 0-d second parameter. With symbolic
    shapes the kernel also takes the symbols as scalar parameters; they are ignored."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    buffers = [p for p in func.params if isinstance(p.ty, tirx.BufferType)]
    store = _tvm.single_block_store(func, len(func.params))
    if store is None or len(buffers) != 3 or not store.buffer.same_as(buffers[2]):
        return None
    make = _TIR_TO_RELAX.get(type(store.value))
    if make is None:
        return None
    loads = [e for e in (store.value.a, store.value.b) if isinstance(e, tvm.ir.TensorLoad)]
    tensor = [ld for ld in loads if ld.source.same_as(buffers[0])]
    scalar = [ld for ld in loads if ld.source.same_as(buffers[1])]
    if len(loads) != 2 or len(tensor) != 1 or len(scalar) != 1 or scalar[0].indices:
        return None
    idx = list(tensor[0].indices)
    same = len(idx) == len(store.indices) and all(
        isinstance(i, tirx.Var) and i.same_as(j) for i, j in zip(idx, store.indices)
    )
    return make if same else None


@relax.expr_functor.mutator
class _Raise(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, ops: dict) -> None:
        super().__init__(mod)
        self.ops = ops  # kernel name -> Relax op
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
            return call
        make = self.ops.get(call.args[0].name_hint)
        args = call.args[1]
        if make is None or not isinstance(args, relax.Tuple) or len(args.fields) < 2:
            return call
        # Past the two tensors: the symbolic dims of a kernel of symbolic shape.
        x, s, *dims = args.fields
        if not all(isinstance(d.ty, tvm.ir.PrimType) for d in dims):
            return call
        xt, st, out = x.ty, s.ty, call.ty
        typed = all(isinstance(t, relax.TensorType) for t in (xt, st, out))
        if not typed or st.ndim != 0 or xt.dtype != out.dtype or st.dtype != out.dtype:
            return call
        if not _tvm.structural_equal(xt.shape, out.shape):
            return call
        self.count += 1
        return make(x, s)


def raise_scalar_elementwise(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """Every call of such a kernel as its Relax operator; the module and how many."""
    ops = {}
    for gvar, func in mod.functions.items():
        make = scalar_elementwise(func)
        if make is not None:
            ops[gvar.name_hint] = make
    if not ops:
        return mod, 0
    return rewrite_relax_functions(mod, lambda m: _Raise(m, ops))
