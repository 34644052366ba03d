"""Which layers `--quantize int4` quantizes and their weights as [K, N] matrices.

Matmul/Gemm/linear layers, and 1x1 convolutions (stride 1, no padding, not grouped), which
are matmuls over the pixels: y[b, n, h, w] = sum_c W[n, c] x[b, c, h, w], K = input channels,
so the int4 groups run along the input channels and the conv runs on the int4 matmul kernels
(`lower-int4` moves the channels last around the op).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..common.layers import Layer, find_layers


def is_int4_layer(layer: Layer) -> bool:
    if layer.kind == "matmul":
        return True
    a = layer.call.attrs
    o, i, kh, kw = layer.weight_shape
    return (
        (kh, kw) == (1, 1)
        and int(a.groups) == 1
        and all(int(v) == 1 for v in (*a.strides, *a.dilation))
        and all(int(v) == 0 for v in a.padding)
    )


def int4_layers(func: relax.Function) -> list[Layer]:
    """The layers of `func` int4 can take, in binding order (names as `find_layers` gives)."""
    return [ly for ly in find_layers(func) if is_int4_layer(ly)]


def window_convs(func: relax.Function, skip=()) -> list[Layer]:
    """The convs int4 does not take (depthwise, stem, any non-pointwise conv) and not in
    `skip`: `--quantize int4` stores their weights int8 (`graphopt.w8_conv_ops`)."""
    return [
        ly
        for ly in find_layers(func)
        if ly.kind == "conv2d" and not is_int4_layer(ly) and ly.name not in skip
    ]


def weight_matrix(layer: Layer) -> np.ndarray:
    """The layer's weight as W [K, N] (y = x @ W; a 1x1 conv's [O, I, 1, 1] transposed)."""
    w = layer.weight
    if layer.kind == "matmul":
        return w
    return np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]).T)


def layer_weight(layer: Layer, matrix: np.ndarray) -> np.ndarray:
    """A [K, N] matrix back in the layer's weight shape (OIHW for a 1x1 conv)."""
    if layer.kind == "matmul":
        return matrix
    return np.ascontiguousarray(matrix.T.reshape(layer.weight_shape))


def out_channels(layer: Layer) -> int:
    return layer.weight_shape[1 if layer.kind == "matmul" else 0]
