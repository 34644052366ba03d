"""Per-layer H = X^T X of the matmul inputs over the calibration feeds (what GPTQ weighs
rounding errors by), from the same tapped fp32 build int8 calibration runs (`tap_module`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tvm

from ..common.layers import Layer, find_layers
from ..int8.calibrate import calibration_runner


def hessians(
    mod: tvm.IRModule,
    feeds: Sequence[Mapping[str, np.ndarray]],
    wanted: Sequence[str],
    target,
    progress: Callable[[str], None] = lambda _m: None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """({layer: H [K, K] float64}, {layer: rows seen}) for the layers named in `wanted`."""
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
        for name in picked:
            x = np.asarray(taps[index[name]], np.float64)
            x = x.reshape(-1, x.shape[-1])
            acc[name] = acc.get(name, 0.0) + x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]
        progress(f"int4: calibration feed {i + 1}/{len(feeds)}")
    return acc, rows
