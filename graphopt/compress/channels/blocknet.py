"""A pruned region as a small numpy network with gradients: what block distillation trains.

The region of `chains.py` (producer, channel-wise ops and depthwise convs, consumer) on its
kept channels, channels last:

    h = x Wp - sp                  producer (1x1 conv or matmul) and its output shift
    h = f(h, ...)                  the region's bindings in order: elementwise ops with
                                   constants (sliced to the kept channels) or region tensors,
                                   depthwise convs h * Wd - sd
    y = h Wq + c                   consumer on the kept rows, its refit bias (a KxK conv:
                                   on h's windows, `consumer_rows`)

Parameters are the producer's and the depthwise convs' weights and shifts and the consumer's
weight and bias: the values the `WeightProbe` can stand in for (a weight input and a shift
after the layer), so the probe runs the model with any of them without a new build. The
other constants (the graph's biases, clip bounds, GELU's factors) stay as they are. Backward
is written per op; numpy because these are a few small ops on a few thousand rows a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..common.layers import Layer
from ..prune.layers import as_kn
from .chains import Operands, Region

# Abramowitz & Stegun 7.1.26: |erf error| < 1.5e-7, enough for gradients (numpy has no erf)
_AS = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (_AS[0] + t * (_AS[1] + t * (_AS[2] + t * (_AS[3] + t * _AS[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


class Unsupported(Exception):
    """The region holds an op or layer shape the network does not model."""


@dataclass
class _Step:
    op: str
    args: list  # ("t", i): region tensor i | ("c", array): constant, channels last
    layer: Layer | None = None  # a depthwise conv


def _unit_producer(p: Layer) -> bool:
    if p.kind == "matmul":
        return True
    a = p.call.attrs
    return (
        int(a.groups) == 1
        and p.weight_shape[2:] == [1, 1]
        and all(int(s) == 1 for s in a.strides)
        and all(int(v) == 0 for v in a.padding)
    )


def channels_last(value: np.ndarray, ndim: int, axis: int, keep: np.ndarray, channels: int):
    """A scalar or per-channel constant of a region as a scalar or a [kept] vector."""
    shape = [1] * (ndim - np.ndim(value)) + list(np.shape(value))
    v = np.asarray(value, np.float32).reshape(shape)
    if shape[axis % ndim] == channels:
        return np.take(v, keep, axis=axis % ndim).reshape(-1)
    return np.float32(v.reshape(-1)[0])


class BlockNet:
    """The region's network (module docstring): `forward`, `backward`, `params`."""

    def __init__(self, region: Region, ops: Operands, layers: dict, keep, w_q, c_q) -> None:
        if not isinstance(region, Region):
            raise Unsupported(f"{type(region).__name__}: not one producer's channels")
        p = region.producer
        if not _unit_producer(p):
            raise Unsupported(f"{p.name}: producer is not a 1x1 conv or matmul")
        self.region, self.keep = region, np.asarray(keep)
        ndim = len(p.call.ty.shape.values)
        wp = as_kn(p)[:, self.keep] if p.kind == "matmul" else p.weight[self.keep, :, 0, 0].T
        self.params = {"p.w": wp.astype(np.float32), "p.s": np.zeros(len(keep), np.float32)}
        self.params.update({"q.w": np.asarray(w_q, np.float32), "q.c": np.asarray(c_q, np.float32)})
        self.steps = [self._step(ops, layers, v, ndim) for v in region.bindings[1:]]

    def _step(self, ops: Operands, layers: dict, var, ndim: int) -> _Step:
        r = self.region
        binding = _binding_of(ops, var)
        name, operands = ops.op_and_args(binding.value)
        if name == "relax.nn.conv2d":
            dw = layers[var]
            a = dw.call.attrs
            if any(int(d) != 1 for d in a.dilation):
                raise Unsupported(f"{dw.name}: dilated depthwise conv")
            w = dw.weight[self.keep, 0]  # [kept, kh, kw]
            self.params[f"{dw.name}.w"] = np.ascontiguousarray(w.transpose(1, 2, 0), np.float32)
            self.params[f"{dw.name}.s"] = np.zeros(len(self.keep), np.float32)
            return _Step("dw", [("t", r.bindings.index(operands[0]))], dw)
        args = []
        for a in operands:
            if a in r.bindings:
                args.append(("t", r.bindings.index(a)))
                continue
            const = ops.consts.get(a, a)
            if isinstance(const, tvm.ir.GenericConst):
                v = const.value.numpy()
            elif isinstance(a, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):  # clip's bounds
                v = np.float32(a.value)
            else:
                raise Unsupported(f"{name}: operand {type(a).__name__}")
            args.append(("c", channels_last(v, ndim, r.axis, self.keep, r.channels)))
        return _Step(name.removeprefix("relax."), args)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        """Consumer output rows [-1, N] of producer inputs x (channels last), and the cache."""
        pr = self.params
        values = [x @ pr["p.w"] - pr["p.s"]]
        for st in self.steps:
            values.append(_forward(st, values, pr))
        y = consumer_rows(values[-1], self.region.consumer) @ pr["q.w"] + pr["q.c"]
        return y, [x, *values]

    def backward(self, cache: list, g_y: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of every parameter for the output gradient g_y (rows)."""
        pr, x, values = self.params, cache[0], cache[1:]
        h, q = values[-1], self.region.consumer
        grads = {"q.w": consumer_rows(h, q).T @ g_y, "q.c": g_y.sum(0)}
        g = [None] * len(values)
        g[-1] = consumer_rows_backward(g_y @ pr["q.w"].T, h.shape, q)
        for i in range(len(self.steps), 0, -1):
            if g[i] is not None:
                _backward(self.steps[i - 1], values, i, g, grads, pr)
        g0 = g[0].reshape(-1, g[0].shape[-1])
        grads["p.w"] = x.reshape(-1, x.shape[-1]).T @ g0
        grads["p.s"] = -g0.sum(0)
        return grads


def _binding_of(ops: Operands, var) -> relax.VarBinding:
    func = ops.mod["main"]
    for block in func.body.blocks:
        for b in block.bindings:
            if b.var.same_as(var):
                return b
    raise Unsupported(f"{var}: not bound in main")


def _arg(a, values):
    return values[a[1]] if a[0] == "t" else a[1]


def _forward(st: _Step, values: list, pr: dict) -> np.ndarray:
    if st.op == "dw":
        return (
            depthwise(values[st.args[0][1]], pr[f"{st.layer.name}.w"], st.layer)
            - pr[f"{st.layer.name}.s"]
        )
    v = [_arg(a, values) for a in st.args]
    if st.op in _BINARY:
        return _BINARY[st.op](v[0], v[1])
    if st.op == "clip":
        return np.clip(v[0], v[1], v[2])
    if st.op in _UNARY:
        return _UNARY[st.op][0](v[0])
    raise Unsupported(f"{st.op}: no gradient here")


_BINARY = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
}
_UNARY = {  # forward, derivative from (input, output)
    "erf": (erf, lambda x, y: 1.1283791670955126 * np.exp(-x * x)),
    "tanh": (np.tanh, lambda x, y: 1.0 - y * y),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), lambda x, y: y * (1.0 - y)),
    "exp": (np.exp, lambda x, y: y),
    "sqrt": (np.sqrt, lambda x, y: 0.5 / y),
    "nn.relu": (lambda x: np.maximum(x, 0), lambda x, y: (x > 0).astype(x.dtype)),
}


def _backward(st: _Step, values: list, i: int, g: list, grads: dict, pr: dict) -> None:
    """Adds step i's input gradients into g (region tensors) and its parameters' into grads."""
    gy, y = g[i], values[i]
    if st.op == "dw":
        j = st.args[0][1]
        gx, gw = depthwise_backward(values[j], pr[f"{st.layer.name}.w"], st.layer, gy)
        grads[f"{st.layer.name}.w"] = gw
        grads[f"{st.layer.name}.s"] = -gy.reshape(-1, gy.shape[-1]).sum(0)
        _accumulate(g, j, gx)
        return
    v = [_arg(a, values) for a in st.args]
    for k, a in enumerate(st.args):
        if a[0] != "t":
            continue
        _accumulate(g, a[1], _local_grad(st.op, v, k, y, gy))


def _local_grad(op: str, v: list, k: int, y, gy):
    if op in ("add",):
        return gy
    if op == "subtract":
        return gy if k == 0 else -gy
    if op == "multiply":
        return gy * v[1 - k]
    if op == "divide":
        return gy / v[1] if k == 0 else -gy * v[0] / (v[1] * v[1])
    if op in ("maximum", "minimum"):
        return gy * (y == v[k])  # ties: both sides (a measure-zero event for real data)
    if op == "clip":
        return gy * ((v[0] >= v[1]) & (v[0] <= v[2]))
    return gy * _UNARY[op][1](v[0], y)


def _accumulate(g: list, j: int, value) -> None:
    g[j] = value if g[j] is None else g[j] + value


def _windows(layer: Layer, padded_shape) -> tuple[list, tuple[int, int]]:
    """The slices of a padded channels-last tensor that each tap of `layer` (a conv) reads,
    tap by tap (i, then j), and the output's height and width."""
    a = layer.call.attrs
    sy, sx = (int(v) for v in a.strides)
    dy, dx = (int(v) for v in a.dilation)
    kh, kw = layer.weight_shape[2:]
    oh = (padded_shape[1] - dy * (kh - 1) - 1) // sy + 1
    ow = (padded_shape[2] - dx * (kw - 1) - 1) // sx + 1
    taps = [
        (slice(None), slice(i * dy, i * dy + sy * (oh - 1) + 1, sy),
         slice(j * dx, j * dx + sx * (ow - 1) + 1, sx))
        for i in range(kh) for j in range(kw)
    ]  # fmt: skip
    return taps, (oh, ow)


def consumer_rows(h: np.ndarray, q: Layer) -> np.ndarray:
    """The rows the consumer's [K, N] weight multiplies: h's channels, or for other convs
    (KxK, strided, padded) the windows of channels-last h, channel-major as `as_kn` orders a
    conv's weight."""
    if _unit_producer(q):  # a matmul or a 1x1 conv of stride 1: the channels
        return h.reshape(-1, h.shape[-1])
    _sy, _sx, py, px = _geometry(q)
    hp = np.pad(h, ((0, 0), py, px, (0, 0)))
    taps, _ = _windows(q, hp.shape)
    return np.stack([hp[t] for t in taps], axis=-1).reshape(-1, h.shape[-1] * len(taps))


def consumer_rows_backward(g: np.ndarray, shape, q: Layer) -> np.ndarray:
    """The gradient for h (its `shape`) of the gradient g for consumer_rows(h, q)."""
    if _unit_producer(q):
        return g.reshape(shape)
    _sy, _sx, py, px = _geometry(q)
    padded = (shape[0], shape[1] + sum(py), shape[2] + sum(px), shape[3])
    taps, (oh, ow) = _windows(q, padded)
    g = g.reshape(shape[0], oh, ow, shape[3], len(taps))
    gp = np.zeros(padded, g.dtype)
    for k, t in enumerate(taps):
        gp[t] += g[..., k]
    return gp[:, py[0] : py[0] + shape[1], px[0] : px[0] + shape[2]]


def _geometry(layer: Layer):
    a = layer.call.attrs
    t, left, b, right = (int(v) for v in a.padding)
    return int(a.strides[0]), int(a.strides[1]), (t, b), (left, right)


def depthwise(x: np.ndarray, w: np.ndarray, layer: Layer) -> np.ndarray:
    """Depthwise conv of channels-last x [B, H, W, C] with w [kh, kw, C] (the layer's
    strides and padding)."""
    sy, sx, py, px = _geometry(layer)
    xp = np.pad(x, ((0, 0), py, px, (0, 0)))
    kh, kw = w.shape[:2]
    ho, wo = (xp.shape[1] - kh) // sy + 1, (xp.shape[2] - kw) // sx + 1
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]), np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i : i + sy * ho : sy, j : j + sx * wo : sx] * w[i, j]
    return y


def depthwise_backward(x, w, layer: Layer, gy) -> tuple[np.ndarray, np.ndarray]:
    sy, sx, py, px = _geometry(layer)
    xp = np.pad(x, ((0, 0), py, px, (0, 0)))
    gxp = np.zeros_like(xp)
    kh, kw = w.shape[:2]
    ho, wo = gy.shape[1:3]
    gw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            window = (slice(None), slice(i, i + sy * ho, sy), slice(j, j + sx * wo, sx))
            gxp[window] += gy * w[i, j]
            gw[i, j] = np.einsum("bhwc,bhwc->c", xp[window], gy)
    h, wd = x.shape[1:3]
    return gxp[:, py[0] : py[0] + h, px[0] : px[0] + wd], gw
