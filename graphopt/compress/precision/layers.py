"""Which layers `--precision` can make 16-bit: what the `lower-precision` pass lowers."""

from __future__ import annotations

from tvm import relax

from ...binding_graph import shape_dims
from ..common.layers import Layer


def known_channels(expr: relax.Expr, axis: int) -> bool:
    """The input's shape is known, its reduced (channel) axis static; other dims may be
    symbolic by name (a sequence length, a batch, an image size)."""
    dims = shape_dims(expr)
    return dims is not None and isinstance(dims[axis], int)


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


def per_channel(layer: Layer) -> bool:
    """A depthwise conv: one filter per channel, no dilation, NCHW / OIHW."""
    if layer.kind != "conv2d":
        return False
    a, dims = layer.call.attrs, shape_dims(layer.data)
    if dims is None or len(dims) != 4:
        return False
    layouts = (a.data_layout, a.kernel_layout, a.out_layout or a.data_layout)
    return (
        tuple(str(v) for v in layouts) == ("NCHW", "OIHW", "NCHW")
        and int(a.groups) == layer.weight_shape[0]
        and dims[1] == layer.weight_shape[0]
        and layer.weight_shape[1] == 1
        and all(int(v) == 1 for v in a.dilation)
    )


def depthwise(layer: Layer) -> bool:
    """A depthwise conv of a static input: the 16-bit depthwise op's layers
    (`graphopt.precision_depthwise`; a symbolic image size keeps the fp32 conv)."""
    dims = shape_dims(layer.data)
    return per_channel(layer) and all(isinstance(d, int) for d in dims)


def window(layer: Layer) -> bool:
    """A full conv (one group) of a static NCHW input that is not pointwise: a 3x3 stem, a
    strided 1x1 (the 16-bit matmul over its gathered windows, `graphopt.precision_window`)."""
    if layer.kind != "conv2d" or pointwise(layer):
        return False
    a, dims = layer.call.attrs, shape_dims(layer.data)
    layouts = (a.data_layout, a.kernel_layout, a.out_layout or a.data_layout)
    return (
        dims is not None
        and len(dims) == 4
        and all(isinstance(d, int) for d in dims)
        and tuple(str(v) for v in layouts) == ("NCHW", "OIHW", "NCHW")
        and int(a.groups) == 1
    )


def supported(layer: Layer, depthwise_convs: bool = False, window_convs: bool = False) -> bool:
    """Layers this pass lowers: matmuls and pointwise convs whose input channels are static,
    and (each with its flag) depthwise and window convs of a static input."""
    if layer.kind == "matmul":
        return known_channels(layer.data, -1)
    if depthwise_convs and depthwise(layer) or window_convs and window(layer):
        return True
    return pointwise(layer) and known_channels(layer.data, 1)
