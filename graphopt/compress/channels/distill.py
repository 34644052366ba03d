"""Block distillation: each pruned region's weights trained together toward the dense model.

The least-squares refit (`sequential.py`) fits one consumer with everything before it fixed.
Here, after it, each region in graph order is trained as one block (`blocknet.BlockNet`:
producer, depthwise convs, consumer, their shifts) by Adam on the pruned model's inputs to
the region, toward the dense model's consumer output (plus the residual error the skip path
carries, as the refit does), starting from the refit. A quarter of the calibration feeds
is held out: the block keeps the parameters with the least held-out error, so it ends no
worse there than the refit it started from. Then the next region sees the trained block's
outputs. One build serves it all: the probe takes every producer's, depthwise conv's and
consumer's weight and shift as inputs.
"""

from __future__ import annotations

import numpy as np

from ...progress import Meter
from ..common.layers import bound_constants, find_layers
from ..int4.hessian import MASK_INPUT, conv_rows
from ..prune.layers import as_kn
from .blocknet import BlockNet, Unsupported
from .chains import Operands, Region
from .sequential import full_rows, probe_for


class _Adam:
    def __init__(self, params: dict, lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        # step sizes relative to each tensor's scale (weights ~0.1, shifts ~0)
        self.scale = {k: max(float(np.sqrt(np.mean(v * v))), 1e-2) for k, v in params.items()}

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        for k, g in grads.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            mh = self.m[k] / (1 - 0.9**self.t)
            vh = self.v[k] / (1 - 0.999**self.t)
            params[k] -= (self.lr * self.scale[k] * mh / (np.sqrt(vh) + 1e-12)).astype(np.float32)


def _channels_last(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if axis == 1 else x


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    x = _channels_last(x, axis)
    return x.reshape(-1, x.shape[-1])


class _Data:
    """Per feed: the region's producer input (channels last), the target rows and the rows
    that count (padding tokens do not)."""

    def __init__(self) -> None:
        self.x, self.t, self.valid = [], [], []

    def add(self, x, target, mask) -> None:
        self.x.append(x)
        self.t.append(target)
        self.valid.append(None if mask is None else (np.asarray(mask).reshape(-1) != 0))

    def loss_grad(self, net: BlockNet, idx, grad: bool):
        x = np.concatenate([self.x[i] for i in idx])
        t = np.concatenate([self.t[i] for i in idx])
        y, cache = net.forward(x)
        err = y - t
        if self.valid[idx[0]] is not None:
            err = err * np.concatenate([self.valid[i] for i in idx])[:, None]
        norm = float(np.sum(t * t)) + 1e-30
        loss = float(np.sum(err * err)) / norm
        return loss, (net.backward(cache, (2.0 / norm) * err) if grad else None)


def _train(net: BlockNet, data: _Data, steps: int, lr: float, batch: int, rng) -> float:
    """Adam on the training feeds; the parameters with the least held-out loss are kept.
    Returns the held-out loss gain (before / after)."""
    n = len(data.x)
    held = list(range(3, n, 4)) if n >= 4 else []
    train = [i for i in range(n) if i not in held] or list(range(n))
    scored = held or train

    def held_loss() -> float:
        return sum(data.loss_grad(net, [i], False)[0] for i in scored)

    best = held_loss()
    start, kept = best, {k: v.copy() for k, v in net.params.items()}
    adam = _Adam(net.params, lr)
    for step in range(steps):
        idx = rng.choice(train, size=min(batch, len(train)), replace=False)
        _loss, grads = data.loss_grad(net, list(idx), True)
        adam.step(net.params, grads)
        if (step + 1) % 20 == 0 or step + 1 == steps:
            now = held_loss()
            if now < best:
                best, kept = now, {k: v.copy() for k, v in net.params.items()}
    net.params.update(kept)
    return start / max(best, 1e-30)


def distill(mod, regions: list[Region], feeds, decision: dict, target, say, **how):
    """(decision, {region: held-out error before / after}): every supported region's block
    trained (module docstring). Added keys: `producer` (stored layout, kept channels),
    `producer_shift`, and per depthwise conv `dw.<layer>` / `dw_shift.<layer>`; `weight` and
    `bias` replaced. how: steps (300), lr (1e-3, relative to each tensor's scale), batch (4)."""
    func = mod["main"]
    ops = Operands(mod, bound_constants(func))
    layers = {ly.var: ly for ly in find_layers(func)}
    chains = [r for r in regions if isinstance(r, Region)]  # not heads, not concatenations
    inner = [layers[v].name for r in chains for v in r.bindings[1:] if v in layers]
    probe = probe_for(mod, regions, target, more=[r.producer.name for r in chains] + inner)
    params = [p.name for p in func.params]
    dense = [probe.runner.run([f[p] for p in params], {}) for f in feeds]
    by_name = {ly.name: ly for ly in layers.values()}
    weights, shifts = probe_inputs(regions, decision, by_name)
    order = sorted(regions, key=lambda r: probe.index[r.consumer.name])
    rng, out, gains = np.random.default_rng(0), dict(decision), {}
    meter = Meter(len(order), "prune macs (block distillation)", say, unit="regions", every=0.5)
    for n, r in enumerate(order):
        d = dict(decision[r.name])
        try:
            net = BlockNet(r, ops, layers, d["keep"], d["weight"], d["bias"])
        except Unsupported as why:
            meter.update(n + 1, f"{r.name}: not distilled ({why})")
            continue
        data = _region_data(r, probe, feeds, dense, (weights, shifts), params)
        steps, lr, batch = how.get("steps", 300), how.get("lr", 1e-3), how.get("batch", 4)
        gains[r.name] = _train(net, data, steps, lr, batch, rng)
        out[r.name] = _apply(net, r, d)
        w, sh = probe_inputs([r], out, by_name)
        weights.update(w)
        shifts.update(sh)
        meter.update(n + 1, f"{r.name}: held-out error / {gains[r.name]:.2f}")
    return out, gains


def _region_data(r: Region, probe, feeds, dense, current, params) -> _Data:
    """The region's producer inputs in the model pruned so far (the `current` probe weights
    and shifts) and its targets: the dense consumer output, plus the residual operand's error
    when the consumer's output joins a residual add."""
    data, index, res = _Data(), probe.index, probe.residual
    for feed, taps in zip(feeds, dense):
        run = probe.runner.run([feed[p] for p in params], *current)
        x = _channels_last(np.asarray(run[index[r.producer.name]]), r.axis)
        goal = _consumer_input_rows(r, np.asarray(taps[index[r.consumer.name]])) @ _kn(r.consumer)
        if r.consumer.name in res:
            i = res[r.consumer.name]
            goal = goal + _rows(np.asarray(taps[i]) - np.asarray(run[i]), r.axis)
        x = np.ascontiguousarray(x, np.float32)
        data.add(x, goal.astype(np.float32), feed.get(MASK_INPUT))
    return data


def _consumer_input_rows(r: Region, x: np.ndarray) -> np.ndarray:
    """The dense consumer input as the rows its weight multiplies (a conv's windows)."""
    if r.consumer.kind == "conv2d":
        return conv_rows(r.consumer, np.asarray(x, np.float64))
    return _rows(x, r.axis)


def _kn(q) -> np.ndarray:
    return as_kn(q).astype(np.float32)


def _apply(net: BlockNet, r: Region, d: dict) -> dict:
    """The trained block into the region's decision (kept channels, stored layouts)."""
    pr = net.params
    d["weight"], d["bias"] = pr["q.w"].copy(), pr["q.c"].copy()
    if r.producer.kind == "matmul":
        d["producer"] = np.ascontiguousarray(pr["p.w"])
    else:
        d["producer"] = np.ascontiguousarray(pr["p.w"].T[:, :, None, None])
    d["producer_shift"] = pr["p.s"].copy()
    for st in net.steps:
        if st.layer is not None:
            name = st.layer.name
            d[f"dw.{name}"] = np.ascontiguousarray(pr[f"{name}.w"].transpose(2, 0, 1)[:, None])
            d[f"dw_shift.{name}"] = pr[f"{name}.s"].copy()
    return d


def probe_inputs(regions: list[Region], decision: dict, layers: dict) -> tuple[dict, dict]:
    """({layer: weight}, {layer: shift}) that make the probe (`sequential.probe_for` with the
    producers and depthwise convs) compute the pruned model of `decision`: whole layers, the
    dropped channels as they were (the consumers' zero rows ignore them). layers: by name."""
    weights, shifts = {}, {}
    for r in regions:
        d, keep = decision[r.name], decision[r.name]["keep"]
        weights[r.consumer.name] = full_rows(r.consumer, keep, d["weight"])
        shifts[r.consumer.name] = -np.asarray(d["bias"], np.float32)
        if "producer" not in d:
            continue
        p = r.producer
        weights[p.name] = np.array(p.weight, np.float32)
        if p.kind == "matmul":
            weights[p.name][:, keep] = d["producer"]
        else:
            weights[p.name][keep] = d["producer"]
        shifts[p.name] = _full_shift(d["producer_shift"], keep, r.channels)
        for key in d:
            if key.startswith("dw."):
                name = key[3:]
                weights[name] = np.array(layers[name].weight, np.float32)
                weights[name][keep] = d[key]
                shifts[name] = _full_shift(d[f"dw_shift.{name}"], keep, r.channels)
    return weights, shifts


def _full_shift(s: np.ndarray, keep, channels: int) -> np.ndarray:
    full = np.zeros(channels, np.float32)
    full[keep] = s
    return full
