"""Per-layer H = X^T X of the matmul inputs over the calibration feeds (what GPTQ weighs
rounding errors by), from the same tapped fp32 build int8 calibration runs (`tap_module`).

Padding tokens: a transformer fed sentences padded to a fixed length computes rows for the
padding that nothing downstream reads (attention and pooling mask them), and with short
sentences they are most of the rows. When a feed has an `attention_mask` input [B, S] and a
layer's input is [B, S, K], only the rows the mask keeps count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tvm

from ..common.layers import Layer, find_layers
from ..int8.calibrate import calibration_runner

MASK_INPUT = "attention_mask"


def _rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """x as rows [-1, K], without the padding rows `mask` (when its shape is x's leading)."""
    if mask is not None and x.ndim == 3 and tuple(np.shape(mask)) == x.shape[:2]:
        return x[np.asarray(mask) != 0]
    return x.reshape(-1, x.shape[-1])


def hessians(
    mod: tvm.IRModule,
    feeds: Sequence[Mapping[str, np.ndarray]],
    wanted: Sequence[str],
    target,
    progress: Callable[[str], None] = lambda _m: None,
    skip_padding: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """({layer: H [K, K] float64}, {layer: rows seen}) for the layers named in `wanted`;
    skip_padding: leave out the rows an `attention_mask` feed marks as padding."""
    layers: list[Layer] = find_layers(mod["main"])
    index = {ly.name: i for i, ly in enumerate(layers)}
    picked = [n for n in wanted if n in index]
    progress(f"int4: building the fp32 graph with {len(layers)} layer inputs as outputs")
    run = calibration_runner(mod, target)
    params = [p.name for p in mod["main"].params]
    acc: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for i, feed in enumerate(feeds):
        taps = run([feed[p] for p in params])
        keep = feed.get(MASK_INPUT) if skip_padding else None
        for name in picked:
            x = _rows(np.asarray(taps[index[name]], np.float64), keep)
            acc[name] = acc.get(name, 0.0) + x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]
        progress(f"int4: calibration feed {i + 1}/{len(feeds)}")
    return acc, rows
