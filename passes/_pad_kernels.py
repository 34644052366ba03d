"""Recognizing the importer's constant-zero pad kernels (shared by fold-pad and lower-int8)."""

from __future__ import annotations

import tvm
from tvm import tirx

from graphopt import _tvm


def zero_pad_widths(func) -> list[tuple[int, int]] | None:
    """(before, after) per axis of a constant-zero pad kernel, else None."""
    store = _tvm.single_block_store(func, 2)
    if store is None or not store.buffer.same_as(func.params[1]):
        return None
    value = store.value
    if isinstance(value, tvm.ir.Call) and str(getattr(value.op, "name", "")).endswith(
        "if_then_else"
    ):
        _, inside, outside = value.args
    elif isinstance(value, tirx.Select):
        inside, outside = value.true_value, value.false_value
    else:
        return None
    if not (isinstance(outside, tirx.FloatImm) and float(outside.value) == 0.0):
        return None
    if not (isinstance(inside, tvm.ir.TensorLoad) and inside.source.same_as(func.params[0])):
        return None
    in_shape = [_int(d) for d in func.params[0].ty.shape]
    out_shape = [_int(d) for d in func.params[1].ty.shape]
    if None in in_shape or None in out_shape or len(inside.indices) != len(store.indices):
        return None
    analyzer = tvm.sym.Analyzer()  # tvm.arith in older TVM
    widths = []
    for d, (src, dst) in enumerate(zip(inside.indices, store.indices)):
        offset = analyzer.simplify(dst - src)
        if not isinstance(offset, tirx.IntImm):
            return None
        before = int(offset.value)
        after = out_shape[d] - in_shape[d] - before
        if before < 0 or after < 0:
            return None
        widths.append((before, after))
    return widths


def _int(x) -> int | None:
    return int(x) if isinstance(x, tirx.IntImm) else None
