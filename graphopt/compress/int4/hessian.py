"""Per-layer H = X^T X of the matmul inputs over the calibration feeds (what GPTQ weighs
rounding errors by), from the same tapped fp32 build int8 calibration runs (`tap_module`).

Padding tokens: a transformer fed sentences padded to a fixed length computes rows for the
padding that nothing downstream reads (attention and pooling mask them), and with short
sentences they are most of the rows. When a feed has an `attention_mask` input [B, S] and a
layer's input is [B, S, K], only the rows the mask keeps count. A 1x1 conv's rows are its
input channels at each pixel (`conv_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tvm

from ...progress import Meter
from ..common.layers import Layer, find_layers
from ..int8.calibrate import calibration_runner

MASK_INPUT = "attention_mask"


def _rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """x as rows [-1, K], without the padding rows `mask` (when its shape is x's leading)."""
    if mask is not None and x.ndim == 3 and tuple(np.shape(mask)) == x.shape[:2]:
        return x[np.asarray(mask) != 0]
    return x.reshape(-1, x.shape[-1])


def conv_rows(layer: Layer, x: np.ndarray) -> np.ndarray:
    """A 1x1 conv's NCHW input as the rows its weight multiplies: the channels at every output
    pixel (stride applied), [-1, C]. Only 1x1 convs without padding are a matmul like this."""
    s = [int(v) for v in layer.call.attrs.strides]
    x = x[:, :, :: s[0], :: s[1]]
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def layer_rows(layer: Layer, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A layer's input as float64 rows [-1, K] (a matmul's without padding rows)."""
    x = np.asarray(x, np.float64)
    return _rows(x, mask) if layer.kind == "matmul" else conv_rows(layer, x)


def hessians(
    mod: tvm.IRModule,
    feeds: Sequence[Mapping[str, np.ndarray]],
    wanted: Sequence[str],
    target,
    progress: Callable[[str], None] = lambda _m: None,
    skip_padding: bool = True,
    sums: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """({layer: H [K, K] float64}, {layer: rows seen}) for the layers named in `wanted`;
    skip_padding: leave out the rows an `attention_mask` feed marks as padding. sums: filled
    with each layer's summed rows (its mean input times the rows seen)."""
    layers: list[Layer] = find_layers(mod["main"])
    index = {ly.name: i for i, ly in enumerate(layers)}
    picked = [n for n in wanted if n in index]
    progress(f"hessians: building the fp32 graph with {len(layers)} layer inputs as outputs")
    run = calibration_runner(mod, target)
    params = [p.name for p in mod["main"].params]
    meter = Meter(len(feeds), "hessians", progress, unit="feeds", every=0.5)
    acc: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for i, feed in enumerate(feeds):
        taps = run([feed[p] for p in params])
        keep = feed.get(MASK_INPUT) if skip_padding else None
        for name in picked:
            x = layer_rows(layers[index[name]], taps[index[name]], keep)
            acc[name] = acc.get(name, 0.0) + x.T @ x
            if sums is not None:
                sums[name] = sums.get(name, 0.0) + x.sum(axis=0)
            rows[name] = rows.get(name, 0) + x.shape[0]
        meter.update(i + 1)
    return acc, rows
