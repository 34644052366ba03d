"""Per-layer H = X^T X of the matmul inputs over the calibration feeds (what GPTQ weighs
rounding errors by), from the same tapped fp32 build int8 calibration runs (`tap_module`).

Padding tokens: a transformer fed sentences padded to a fixed length computes rows for the
padding that nothing downstream reads (attention and pooling mask them), and with short
sentences they are most of the rows. When a feed has an `attention_mask` input [B, S] and a
layer's input is [B, S, K], only the rows the mask keeps count. A conv's rows are its
input windows at each output pixel (`conv_rows`; a 1x1 conv's: the channels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

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
    """A conv's NCHW input as the rows its OIHW weight multiplies, [-1, C x KH x KW]: the
    window of every output pixel (stride, padding, dilation applied), channel-major like
    the weight's `reshape(O, -1)`. A 1x1 conv without padding: its channels at every pixel."""
    a = layer.call.attrs
    s = [int(v) for v in a.strides]
    kh, kw = layer.weight_shape[2:]
    top, left, bottom, right = (int(v) for v in a.padding)
    if kh == kw == 1 and not (top or left or bottom or right):
        x = x[:, :, :: s[0], :: s[1]]
        return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    d = [int(v) for v in a.dilation]
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (x.shape[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (x.shape[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    taps = [
        x[:, :, i * d[0] : i * d[0] + s[0] * (oh - 1) + 1 : s[0],
          j * d[1] : j * d[1] + s[1] * (ow - 1) + 1 : s[1]]
        for i in range(kh) for j in range(kw)
    ]  # fmt: skip
    windows = np.stack(taps, axis=2)  # [N, C, KH x KW, OH, OW]
    return windows.transpose(0, 3, 4, 1, 2).reshape(-1, x.shape[1] * kh * kw)


def layer_rows(layer: Layer, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A layer's input as float64 rows [-1, K] (a matmul's without padding rows)."""
    x = np.asarray(x, np.float64)
    return _rows(x, mask) if layer.kind == "matmul" else conv_rows(layer, x)


@dataclass
class RowSample:
    """What the W4A8 smoothing search (`smooth.py`) needs besides H: each layer's channel
    maxima over every calibration row, and up to about `cap` of the rows (evenly spaced
    within each feed: a CNN's feed has thousands of pixels, a sentence a few dozen tokens)."""

    feeds: int
    cap: int = 4096
    maxes: dict[str, np.ndarray] = field(default_factory=dict)
    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, name: str, x: np.ndarray) -> None:
        if not len(x):
            return
        m = np.abs(x).max(axis=0)
        self.maxes[name] = np.maximum(self.maxes[name], m) if name in self.maxes else m
        step = -(-len(x) // max(1, self.cap // max(self.feeds, 1)))
        self.parts.setdefault(name, []).append(np.asarray(x[::step], np.float32))

    def rows(self, name: str) -> np.ndarray:
        return np.concatenate(self.parts[name])


def hessians(
    mod: tvm.IRModule,
    feeds: Sequence[Mapping[str, np.ndarray]],
    wanted: Sequence[str],
    target,
    progress: Callable[[str], None] = lambda _m: None,
    skip_padding: bool = True,
    sums: dict[str, np.ndarray] | None = None,
    sample: RowSample | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """({layer: H [K, K] float64}, {layer: rows seen}) for the layers named in `wanted`;
    skip_padding: leave out the rows an `attention_mask` feed marks as padding. sums: filled
    with each layer's summed rows (its mean input times the rows seen). sample: filled with
    channel maxima and a sample of rows (`RowSample`)."""
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
            if sample is not None:
                sample.add(name, x)
            rows[name] = rows.get(name, 0) + x.shape[0]
        meter.update(i + 1)
    return acc, rows
