"""Bias correction: remove the mean error that quantization adds to each output channel.

Rounding the weights per channel shifts a layer's output mean, E[conv(x, DQ(Wq) - W)] != 0,
and with a 3x3 depthwise kernel (9 weights per channel) nothing averages the shift out (Nagel et
al. 2019, "Data-Free Quantization", section 4.2: the MobileNet failure). Clipping an activation
to its calibrated range shifts it too. Both errors are linear in the layer's input, so each
output channel's expected error is, exactly,

    E[y_q - y] = mean_pos conv(E[x], DQ(Wq) - W) + mean_pos conv(E[QDQ(x) - x], DQ(Wq))

with E[.] over the calibration samples (one input-sized mean per layer, which calibration
keeps) and mean_pos over the output positions (zero padding included). It is subtracted from
the layer's bias by the `bias-correction` pass (passes/bias_correction.py), before `quantize`.
Per layer, on fp32 inputs: the sequential variant on the quantized model's own activations
fits the propagated errors of the calibration set and measured worse on held-out photos
(MobileNetV2 52/60 vs 57/60).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.errors import CalibrationError
from ..common.layers import Layer
from .qdq import ActQuant, dequant_weight_np, fake_quant_np, weight_qparams

KEY = "bias_correction"  # per-layer entry of the ranges file: one float per output channel


class InputMean:
    """Running mean of a layer's input over the samples: [C, H, W] for conv2d (NCHW: mean
    over the batch), [K] for matmul (mean over every leading axis)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        x = x.reshape(-1, *x.shape[1:]) if self.kind == "conv2d" else x.reshape(-1, x.shape[-1])
        s = x.sum(axis=0, dtype=np.float64)  # float64 sums without a float64 copy
        self.total = s if self.total is None else self.total + s
        self.count += x.shape[0]

    @property
    def mean(self) -> np.ndarray:
        if self.total is None:
            raise CalibrationError("bias correction: no calibration values were observed")
        return self.total / self.count


def conv2d_channel_mean(x_mean: np.ndarray, w: np.ndarray, attrs) -> np.ndarray:
    """mean over output positions of conv2d(x_mean [C, H, W], w [O, C/g, KH, KW]) per output
    channel (no bias): the window sums of each input channel, weighted by the kernel."""
    s = [int(v) for v in attrs.strides]
    p = [int(v) for v in attrs.padding]  # top, left, bottom, right
    d = [int(v) for v in attrs.dilation]
    groups = int(attrs.groups)
    c, h, wd = x_mean.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x_mean, ((0, 0), (p[0], p[2]), (p[1], p[3])))
    oh = (h + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (wd + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    win = np.zeros((c, kh, kw))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * d[0], j * d[1]
            rows = slice(r0, r0 + s[0] * (oh - 1) + 1, s[0])
            cols = slice(c0, c0 + s[1] * (ow - 1) + 1, s[1])
            win[:, i, j] = xp[:, rows, cols].sum(axis=(1, 2))
    win /= oh * ow
    og = o // groups
    out = np.empty(o)
    for g in range(groups):
        wg = w[g * og : (g + 1) * og].astype(np.float64)
        out[g * og : (g + 1) * og] = np.einsum("ocij,cij->o", wg, win[g * cg : (g + 1) * cg])
    return out


def output_channel_mean(layer: Layer, x_mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    if layer.kind == "conv2d":
        return conv2d_channel_mean(x_mean, w, layer.call.attrs)
    return x_mean @ w.astype(np.float64)


@dataclass(frozen=True)
class LayerError:
    """What calibration kept for one layer: E[x] and E[QDQ(x) - x]."""

    x_mean: np.ndarray
    act_error_mean: np.ndarray


def correction(layer: Layer, err: LayerError, per_channel: bool = True) -> np.ndarray:
    """E[y_q - y] per output channel (see the module docstring)."""
    w = np.asarray(layer.weight, np.float32)
    wq, s_w = weight_qparams(w, layer.weight_axis, per_channel)
    w_deq = dequant_weight_np(wq, s_w, layer.weight_axis)
    weight_part = output_channel_mean(layer, err.x_mean, w_deq.astype(np.float64) - w)
    return weight_part + output_channel_mean(layer, err.act_error_mean, w_deq)


def act_error(x: np.ndarray, q: ActQuant) -> np.ndarray:
    """QDQ(x) - x in float32 (exact: both are float32 and the error is below x's magnitude;
    `InputMean` sums it in float64)."""
    x = np.asarray(x, np.float32)
    return fake_quant_np(x, q) - x
