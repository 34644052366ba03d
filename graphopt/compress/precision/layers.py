"""Which layers `--precision` can make 16-bit: what the `lower-precision` pass lowers."""

from __future__ import annotations

import tvm
from tvm import relax

from ..common.layers import Layer


def static(expr: relax.Expr) -> bool:
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    return values is not None and all(isinstance(v, tvm.tirx.IntImm) for v in values)


def pointwise(layer: Layer) -> bool:
    """A 1x1 conv with stride 1, no padding, no dilation and one group: a matmul over C."""
    if layer.kind != "conv2d":
        return False
    a = layer.call.attrs
    return (
        layer.weight_shape[2:] == [1, 1]
        and int(a.groups) == 1
        and all(int(v) == 1 for v in (*a.strides, *a.dilation))
        and all(int(v) == 0 for v in a.padding)
    )


def supported(layer: Layer) -> bool:
    """Layers this pass lowers: matmuls and pointwise convs of static shape."""
    return (layer.kind == "matmul" or pointwise(layer)) and static(layer.data)
