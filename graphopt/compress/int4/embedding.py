"""Which gathers `lower-int4` turns into int4 rows: `take(table, idx, axis=0)` of a constant
fp32 [V, D] table of at least 1 MiB whose D splits into whole groups. A transformer's word
embedding (MiniLM's: 47 MB fp32, half the model) is what int4 matmuls alone would leave."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..common.layers import bound_constants

MIN_BYTES = 1 << 20


def embedding_table(call: relax.Expr, consts: dict, group: int) -> np.ndarray | None:
    """The fp32 [V, D] table `call` gathers rows of, when int4 applies to it."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    if call.op.name != "relax.take" or call.attrs.axis is None:
        return None
    table = consts.get(call.args[0], call.args[0])
    if not isinstance(table, tvm.ir.GenericConst):
        return None
    ty = table.ty
    if str(ty.dtype) != "float32" or len(ty.shape.values) != 2 or int(call.attrs.axis) % 2:
        return None
    dim = int(ty.shape.values[1])
    if int(ty.shape.values[0]) * dim * 4 < MIN_BYTES or dim % group:
        return None
    value = table.value.numpy()
    return value if np.isfinite(value).all() else None


def find_tables(func: relax.Function, group: int) -> list[np.ndarray]:
    """The tables of `func` that int4 embeddings would quantize, in binding order."""
    consts = bound_constants(func)
    found = []
    body = func.body
    for block in body.blocks if isinstance(body, relax.SeqExpr) else []:
        for b in block.bindings:
            table = embedding_table(b.value, consts, group)
            if table is not None:
                found.append(table)
    return found
