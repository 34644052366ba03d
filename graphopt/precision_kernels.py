"""The two 16-bit ops side by side (the matmul of `precision_ops`, the depthwise conv of
`precision_depthwise`): the graph passes that hand operands between them or fold epilogues
into them (`precision-handoff`, `fuse-precision-epilogue`) treat both alike through these."""

from __future__ import annotations

import tvm

from graphopt import precision_depthwise, precision_ops
from graphopt.precision_depthwise import DepthwiseSpec
from graphopt.precision_ops import PrecisionMatmulSpec

Spec16 = PrecisionMatmulSpec | DepthwiseSpec


def spec_of16(func) -> Spec16 | None:
    """The spec a 16-bit matmul or depthwise kernel carries, else None."""
    return precision_ops.spec_of(func) or precision_depthwise.spec_of(func)


def portable_for(spec: Spec16) -> tvm.tirx.PrimFunc:
    """The portable kernel of either op."""
    if isinstance(spec, DepthwiseSpec):
        return precision_depthwise.portable_kernel(spec)
    return precision_ops.portable_kernel(spec)


def kernel_name(spec: Spec16) -> str:
    return "depthwise16" if isinstance(spec, DepthwiseSpec) else "matmul16"
