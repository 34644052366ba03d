"""int8 embedding tables: `take(fp32 table, indices)` -> int8 table, one fp32 scale per row.

Only conv2d/matmul weights go through the QDQ form; a transformer's word-embedding table (a
Gather from a constant [vocab, dim] table, MiniLM's is 47 MB fp32) would stay fp32 and dominate
the artifact. Here each row r gets a symmetric scale s[r] = max|table[r]| / 127 and
    take(table, idx, axis=0)  ->  astype(take(wq, idx, axis=0), f32) * take(s, idx, axis=0)
with s stored as [vocab, 1], so only the gathered rows are dequantized (one fused injective
kernel) and the int8 table is what the artifact carries. Per-row scales keep a rare token's
small row as precise as a frequent one's; the error of each element is at most s[r] / 2.

Small tables (position / token-type embeddings, below `MIN_BYTES`) are left fp32: they cost
little and the saving would not pay for the extra gather.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R_op
from tvm.relax.analysis import remove_all_unused
from tvm.relax.expr_functor import PyExprMutator, mutator

from ... import _tvm
from ..common.layers import bound_constants
from .qdq import WEIGHT_QMAX

TAKE = "relax.take"
MIN_BYTES = 1 << 20  # fp32 tables at least this large are quantized


def embedding_qparams(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (wq int8 [V, D], scale fp32 [V, 1]); all-zero rows get scale 1."""
    table = np.asarray(table, np.float32)
    amax = np.abs(table).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / WEIGHT_QMAX, 1.0).astype(np.float32)
    wq = np.clip(np.round(table / scale), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return wq, scale


def gather_dequantized_np(wq: np.ndarray, scale: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """numpy reference of the rewritten gather (the same fp32 multiply per element)."""
    return wq[idx].astype(np.float32) * scale[idx]


def quantize_embeddings(
    func: relax.Function, min_bytes: int = MIN_BYTES
) -> tuple[relax.Function, list[list[int]]]:
    """Rewrite every large fp32 embedding gather of `func`; returns it and the tables' shapes."""
    rewriter = _Rewriter(bound_constants(func), min_bytes)
    new = rewriter.visit_expr(func)
    if rewriter.tables:  # a table bound to a variable must not stay in the artifact
        new = remove_all_unused(new)
    return new, rewriter.tables


def gather_dequantized(bb: relax.BlockBuilder, table: np.ndarray, idx, mode) -> relax.Expr:
    """The int8 rows of `table` gathered at `idx` and dequantized (what `quantize` emits;
    the int8 probe graph emits the same)."""
    wq, scale = embedding_qparams(table)
    rows = bb.emit(R_op.take(relax.const(wq), idx, axis=0, mode=mode))
    scales = bb.emit(R_op.take(relax.const(scale), idx, axis=0, mode=mode))
    return R_op.multiply(R_op.astype(rows, "float32"), scales)


def embedding_table(call: relax.Call, consts: dict, min_bytes: int = MIN_BYTES):
    """The fp32 [V, D] constant table `call` gathers rows of, when it is worth quantizing."""
    return _table(call, consts, min_bytes)


def _table(call: relax.Call, consts: dict, min_bytes: int) -> np.ndarray | None:
    """The fp32 [V, D] constant table `call` gathers rows of, when it is worth quantizing."""
    if not isinstance(call.op, tvm.ir.Op) or call.op.name != TAKE:
        return None
    table = consts.get(call.args[0], call.args[0])
    if not isinstance(table, tvm.ir.GenericConst):
        return None
    ty = table.ty
    if str(ty.dtype) != "float32" or len(ty.shape.values) != 2:
        return None
    axis = call.attrs.axis
    if axis is None or int(axis) % 2 != 0:
        return None
    value = _tvm.constant_value(table)
    if value.nbytes < min_bytes or not np.isfinite(value).all():
        return None
    return value


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, consts: dict, min_bytes: int) -> None:
        super().__init__()
        self.consts = consts
        self.min_bytes = min_bytes
        self.tables: list[list[int]] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        table = _table(call, self.consts, self.min_bytes)
        if table is None:
            return super().visit_call_(call)
        idx = self.visit_expr(call.args[1])
        self.tables.append(list(table.shape))
        return gather_dequantized(self.builder_, table, idx, call.attrs.mode)
