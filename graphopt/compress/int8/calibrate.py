"""Calibration: run the fp32 graph over the samples and observe every quantizable layer's input.

The graph is rebuilt with each layer's input as an extra output (`tap_module`), built once with
the target's schedules, and run over every feed; a `Histogram` per layer accumulates the values,
and an observer turns it into the range written to the ranges file.

Equalization (`equalize.py`) changes only the depthwise inputs on the calibration samples: each
consumer's input channel c becomes k_c times the original (the producer's output, exactly: k_c
never pushes a channel past a relu6 bound on these samples). So its second round reuses the
first round's build (`calibration_runner`) and scales those taps (`input_scales`) instead of
building the equalized graph again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from ...build import build_runner
from ...progress import Meter
from ..common.layers import find_joins, find_layers
from .bias_correction import KEY, InputMean, LayerError, act_error, correction
from .equalize import ChannelMax
from .observers import METHODS, Histogram, observe_range
from .qdq import act_qparams
from .ranges import write_ranges

# Residual joins keep their full observed range (clipping the residual stream, which every
# later block reads, cost top-1 agreement on MobileNetV2). `quantize` uses it for the tensors
# only joins read; where a layer also reads the tensor, the layer's range wins.
JOIN_METHOD = "minmax"


def tap_module(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[str]]:
    """`main` returning (input of each layer..., operands and result of each join (residual
    add)..., original outputs...); and the layer names."""
    func = relax.transform.ToNonDataflow()(mod)["main"]
    layers = find_layers(func)
    joins = [t for j in find_joins(func) for t in j.tensors]  # residual adds: a, b, a + b
    body = func.body
    outputs = list(body.body.fields) if isinstance(body.body, relax.Tuple) else [body.body]
    taps = [*(ly.data for ly in layers), *joins]
    result = relax.BlockBuilder().normalize(relax.Tuple([*taps, *outputs]))
    new_body = relax.SeqExpr(body.blocks, result)
    new_func = relax.Function(func.params, new_body, result.ty, attrs=func.attrs)
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    new["main"] = new_func
    return relax.transform.Normalize()(new), [ly.name for ly in layers]


def calibration_runner(
    mod: tvm.IRModule, target: str = "x86", target_options: Mapping[str, str] | None = None
) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """The built fp32 graph returning every layer's input and every join's operands."""
    return build_runner(tap_module(mod)[0], target, target_options)


def calibrate(
    mod: tvm.IRModule,
    feeds: Sequence[Mapping[str, np.ndarray]],
    method: str = "entropy",
    *,
    act_dtype: str = "int8",
    target: str = "x86",
    target_options: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    bias_correction: bool = False,
    per_channel: bool = True,
    channel_max: bool = False,
    runner: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
    input_scales: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict]:
    """Ranges of every layer's input {name: {kind, weight_shape, input: [lo, hi], ...}}.

    bias_correction: also each layer's mean output error per channel (`bias_correction.py`;
    a second pass over the samples measures the activation part with the chosen ranges).
    channel_max: also each depthwise layer's per-channel input max (for `equalize.py`).
    runner: `calibration_runner` of a graph with the same layers (else built here);
    input_scales: {layer: k per input channel} applied to those layers' taps (equalization)."""
    say = progress or (lambda _m: None)
    if method not in METHODS:
        from ..common.errors import CalibrationError

        raise CalibrationError(f"unknown calibration method '{method}' (use {', '.join(METHODS)})")
    layers = find_layers(mod["main"])
    if not layers:
        return {}
    if runner is None:
        say(f"calibrate: building the fp32 graph with {len(layers)} layer inputs as outputs")
        runner = calibration_runner(mod, target, target_options)
    scales = [(input_scales or {}).get(ly.name) for ly in layers]
    scales = [None if k is None else np.asarray(k, np.float32).reshape(1, -1, 1, 1) for k in scales]
    joins = find_joins(mod["main"])
    hists = [Histogram() for _ in range(len(layers) + 3 * len(joins))]
    means = [InputMean(ly.kind) for ly in layers]
    depthwise = [ly.kind == "conv2d" and int(ly.call.attrs.groups) > 1 for ly in layers]
    maxes = [ChannelMax() for _ in layers]
    params = [p.name for p in mod["main"].params]

    def each_feed(what: str, use: Callable[[list[np.ndarray]], None]) -> None:
        meter = Meter(len(feeds), f"calibrate{what}", say, unit="samples", every=0.5)
        for i, feed in enumerate(feeds):
            values = runner([feed[n] for n in params])[: len(hists)]
            use([v if k is None else v * k for v, k in zip(values, scales)] + values[len(scales) :])
            rate = (i + 1) / max(time.perf_counter() - meter.start, 1e-9)
            meter.update(i + 1, f"{rate:.1f}/s")

    def observe(values: list[np.ndarray]) -> None:
        for h, value in zip(hists, values):
            h.add(value)
        if bias_correction:
            for m, value in zip(means, values):
                m.add(value)
        if channel_max:
            for cm, dw, value in zip(maxes, depthwise, values):
                if dw:
                    cm.add(value)

    each_feed("", observe)
    result = _ranges(layers, hists, maxes, joins, method)
    if bias_correction:
        qparams = [act_qparams(*result[ly.name]["input"], act_dtype) for ly in layers]
        errors = [InputMean(ly.kind) for ly in layers]

        def observe_error(values: list[np.ndarray]) -> None:
            for e, q, value in zip(errors, qparams, values):
                e.add(act_error(value, q))

        each_feed(" (bias correction)", observe_error)
        for layer, m, e in zip(layers, means, errors):
            c = correction(layer, LayerError(m.mean, e.mean), per_channel)
            result[layer.name][KEY] = [float(v) for v in c]
    return result


def _ranges(layers, hists, maxes, joins, method: str, levels: int = 256) -> dict[str, dict]:
    """The ranges file's entries from the observed histograms: each layer's input range (and
    depthwise channel maxima), each join's two inputs and output."""
    result = {}
    for layer, h in zip(layers, hists):
        lo, hi = observe_range(h, method, levels)
        result[layer.name] = {
            "kind": layer.kind,
            "weight_shape": layer.weight_shape,
            "input": [lo, hi],
            "observed": [h.lo, h.hi],
        }
    for layer, cm in zip(layers, maxes):
        if cm.value is not None:
            result[layer.name]["channel_max"] = [float(v) for v in cm.value]
    for i, join in enumerate(joins):  # {input: a's range, input_b: b's, output: a + b's}
        taps = hists[len(layers) + 3 * i :][:3]
        a, b, y = (observe_range(h, JOIN_METHOD, levels) for h in taps)
        result[join.name] = {
            "kind": "add",
            "weight_shape": [],
            "input": list(a),
            "input_b": list(b),
            "output": list(y),
        }
    return result


def calibrate_to_file(path: str | Path, mod, feeds, method: str = "entropy", **kw) -> dict:
    ranges = calibrate(mod, feeds, method, **kw)
    write_ranges(path, ranges, method)
    return ranges
