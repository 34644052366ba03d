"""Floating point operations of graphopt's generated kernels, from the recipes they carry.

TIR's estimate (`estimate_tir_flops`) counts the loops as written: it cannot count a
block-sparse kernel's loops over the stored blocks (`indptr`: MobileNetV2 70% sparse came out
at 32e9 MFLOPs), and it counts a 16-bit kernel's rounding, widening and padding work as
arithmetic (MobileNetV2 bf16: 798 against fp32's 621 MFLOPs). The report counts what the
layer computes: 2 flops per multiply-add of the op (stored blocks only, for sparse ones).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import tvm


def recipe_flops(func: tvm.tirx.PrimFunc, sizes: Mapping[str, int]) -> int | None:
    """2 x the multiply-adds of a generated kernel's op (a symbolic dim counts at `sizes`,
    0 without a size); None for a kernel without one of these recipes."""
    from graphopt import precision_depthwise, precision_ops, sparse_ops

    def rows(x_shape) -> int:
        return math.prod(sizes.get(d, 0) if isinstance(d, str) else d for d in x_shape[:-1])

    spec = sparse_ops.spec_of(func)
    if spec is not None:
        return 2 * rows(spec.x_shape) * spec.nnzb * spec.block
    mm, dw = precision_ops.spec_of(func), precision_depthwise.spec_of(func)
    if mm is None and dw is None:
        return None  # a kernel may carry both (a pointwise and a depthwise conv fused)
    flops = 2 * rows(mm.x_shape) * mm.k * mm.n if mm is not None else 0
    return flops + (2 * math.prod(dw.out_shape) * math.prod(dw.kernel) if dw is not None else 0)
