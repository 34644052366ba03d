"""Which layers are pruned, and their weights as one matrix W [K inputs, N outputs].

Prunable: matmuls with a constant [K, N] weight and 1x1 convs of one group (a matmul over
channels: OIHW [N, K, 1, 1]). Depthwise and other grouped convs hold few weights per output
and are left dense; KxK convs are left dense too (no Hessian of their windows here).
Each pattern sees the same orientation: blocks run along N (output channels), N:M groups along
K (the inputs one output channel sums).
"""

from __future__ import annotations

import numpy as np

from ..common.layers import Layer


def prunable(layer: Layer) -> bool:
    if layer.kind == "matmul":
        return True
    shape = layer.weight_shape
    return int(layer.call.attrs.groups) == 1 and shape[2:] == [1, 1]


def as_kn(layer: Layer, w: np.ndarray | None = None) -> np.ndarray:
    """The layer's weight (or `w`, stored as the layer stores it) as [K, N]; a conv's OIHW
    weight as [C x KH x KW, O], the rows of `conv_rows` (a 1x1 conv's: [C, O])."""
    w = layer.weight if w is None else w
    if layer.kind == "matmul":
        return np.asarray(w)
    return np.asarray(w).reshape(w.shape[0], -1).T


def from_kn(layer: Layer, w: np.ndarray) -> np.ndarray:
    """[K, N] back in the layer's stored layout (fp32, contiguous)."""
    if layer.kind == "matmul":
        return np.ascontiguousarray(w, np.float32)
    return np.ascontiguousarray(w.T.reshape(layer.weight_shape), np.float32)
