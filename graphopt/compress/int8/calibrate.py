"""Calibration: run the fp32 graph over the samples and observe every quantizable layer's input.

The graph is rebuilt with each layer's input as an extra output (`tap_module`), built once with
the target's schedules (compile builds the probe graph of `probe.py`, which sensitivity runs
next), and run over every feed; a `Histogram` per layer accumulates the values, and an
observer turns it into the range written to the ranges file.

Equalization (`equalize.py`) changes only the depthwise inputs on the calibration samples: each
consumer's input channel c becomes k_c times the original (the producer's output, exactly: k_c
never pushes a channel past a relu6 bound on these samples). So its round reuses the same
build, scales those taps, and observes only them again (`calibrate(equalize=...)`); the pass
that measures bias corrections covers only the layers the equalization round did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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


def tap_module(mod: tvm.IRModule, extra=None) -> tuple[tvm.IRModule, list[str]]:
    """`main` returning (input of each layer..., operands and result of each join (residual
    add)..., `extra(func)` tensors if given..., original outputs...); and the layer names."""
    func = relax.transform.ToNonDataflow()(mod)["main"]
    layers = find_layers(func)
    joins = [t for j in find_joins(func) for t in j.tensors]  # residual adds: a, b, a + b
    body = func.body
    outputs = list(body.body.fields) if isinstance(body.body, relax.Tuple) else [body.body]
    taps = [*(ly.data for ly in layers), *joins, *(extra(func) if extra else [])]
    result = relax.BlockBuilder().normalize(relax.Tuple([*taps, *outputs]))
    new_body = relax.SeqExpr(body.blocks, result)
    new_func = relax.Function(func.params, new_body, result.ty, attrs=func.attrs)
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    new["main"] = new_func
    # back into a dataflow block: outside one, FuseOps fuses nothing (every elementwise op its
    # own kernel: a build twice as long and a slower graph)
    new = relax.transform.ConvertToDataflow()(relax.transform.Normalize()(new))
    return new, [ly.name for ly in layers]


def calibration_runner(
    mod: tvm.IRModule, target: str = "x86", target_options: Mapping[str, str] | None = None
) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """The built fp32 graph returning every layer's input and every join's operands."""
    return build_runner(tap_module(mod)[0], target, target_options, arg_checks=False)


class _Observed:
    """Per-layer and per-join statistics over the samples (`calibrate`'s state)."""

    def __init__(self, layers, joins, input_scales, bias_correction: bool, channel_max: bool):
        self.layers = layers
        self.hists = [Histogram() for _ in range(len(layers) + 3 * len(joins))]
        self.means = [InputMean(ly.kind) for ly in layers] if bias_correction else []
        self.errors: dict[int, InputMean] = {}
        self.depthwise = [ly.kind == "conv2d" and int(ly.call.attrs.groups) > 1 for ly in layers]
        self.maxes = [ChannelMax() for _ in layers] if channel_max else []
        self.k = [_channel_k((input_scales or {}).get(ly.name)) for ly in layers]

    def scaled(self, values: list[np.ndarray]) -> list[np.ndarray]:
        """The taps with each layer's input scale k applied (equalization)."""
        n = len(self.k)
        return [v if k is None else v * k for v, k in zip(values, self.k)] + values[n:]

    def observe(self, values: list[np.ndarray]) -> None:
        for h, value in zip(self.hists, values):
            h.add(value)
        for m, value in zip(self.means, values):
            m.add(value)
        for cm, dw, value in zip(self.maxes, self.depthwise, values):
            if dw:
                cm.add(value)

    def rescale(self, scales: Mapping[str, np.ndarray]) -> list[int]:
        """New input scales for some layers: their histograms start over (the caller observes
        them again), their means scale exactly (the mean is linear); the layer indices."""
        again = [i for i, ly in enumerate(self.layers) if ly.name in scales]
        for i in again:
            k = _channel_k(scales[self.layers[i].name])
            self.k[i] = k if self.k[i] is None else self.k[i] * k
            self.hists[i] = Histogram()
            if self.means:
                self.means[i].total = self.means[i].total * k[0]
        return again

    def observe_errors(self, which: Sequence[int], qparams, values: list[np.ndarray]) -> None:
        for i in which:
            self.errors.setdefault(i, InputMean(self.layers[i].kind)).add(
                act_error(values[i], qparams[i])
            )


def _channel_k(k: np.ndarray | None) -> np.ndarray | None:
    return None if k is None else np.asarray(k, np.float32).reshape(1, -1, 1, 1)


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
    equalize: Equalize | None = None,
) -> dict[str, dict]:
    """Ranges of every layer's input {name: {kind, weight_shape, input: [lo, hi], ...}}.

    bias_correction: also each layer's mean output error per channel (`bias_correction.py`;
    a second pass over the samples measures the activation part with the chosen ranges).
    channel_max: also each depthwise layer's per-channel input max (for `equalize.py`).
    runner: `calibration_runner` of a graph with the same layers (else built here);
    input_scales: {layer: k per input channel} applied to those layers' taps (equalization).
    equalize: given the first pass's ranges (with channel maxima), the equalized module and
    its scales; only the rescaled layers are observed again (the other taps do not change)."""
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
    joins = find_joins(mod["main"])
    seen = _Observed(
        layers, joins, input_scales, bias_correction, channel_max or equalize is not None
    )
    params = [p.name for p in mod["main"].params]
    passes = _Passes(feeds, params, runner, len(seen.hists), say)
    passes.run("", lambda values: seen.observe(seen.scaled(values)))
    result = _ranges(layers, seen.hists, seen.maxes, joins, method)
    errored: list[int] = []
    if equalize is not None:
        errored = _equalize_round(seen, passes, equalize, result, act_dtype, say)
        result = _ranges(seen.layers, seen.hists, seen.maxes if channel_max else [], joins, method)
    if bias_correction:
        qparams = [act_qparams(*result[ly.name]["input"], act_dtype) for ly in seen.layers]
        rest = [i for i in range(len(layers)) if i not in errored]
        passes.run(
            " (bias correction)",
            lambda values: seen.observe_errors(rest, qparams, seen.scaled(values)),
        )
        for i, layer in enumerate(seen.layers):
            err = LayerError(seen.means[i].mean, seen.errors[i].mean)
            result[layer.name][KEY] = [float(v) for v in correction(layer, err, per_channel)]
    return result


# (first-pass ranges) -> (the equalized module, {depthwise layer: k per input channel})
Equalize = Callable[[dict], tuple[tvm.IRModule, dict]]


class _Passes:
    """Runs the graph over every feed, with a progress bar, handing each feed's taps on.

    The graph runs one feed ahead in a worker thread (TVM releases the GIL) while this thread
    observes the previous feed's taps: the observers' numpy work is as long as the run."""

    def __init__(self, feeds, params, runner, taps: int, say) -> None:
        self.feeds, self.params, self.runner, self.taps, self.say = feeds, params, runner, taps, say

    def run(self, what: str, use: Callable[[list[np.ndarray]], None]) -> None:
        meter = Meter(len(self.feeds), f"calibrate{what}", self.say, unit="samples", every=0.5)
        inputs = [[feed[n] for n in self.params] for feed in self.feeds]
        with ThreadPoolExecutor(max_workers=1) as worker:
            ahead = worker.submit(self.runner, inputs[0]) if inputs else None
            for i in range(len(inputs)):
                values = ahead.result()[: self.taps]
                if i + 1 < len(inputs):
                    ahead = worker.submit(self.runner, inputs[i + 1])
                use(values)
                rate = (i + 1) / max(time.perf_counter() - meter.start, 1e-9)
                meter.update(i + 1, f"{rate:.1f}/s")


def _equalize_round(seen, passes, equalize, first, act_dtype, say) -> list[int]:
    """The equalized module's layers, its rescaled inputs observed again; the other layers'
    activation errors measured in the same pass when bias correction wants them (their
    ranges are final). Returns the layers whose errors were measured."""
    eq_mod, scales = equalize(first)
    again = seen.rescale(scales)
    seen.layers = find_layers(eq_mod["main"])
    if not again:
        return []
    say(f"equalize: {len(again)} depthwise inputs rescaled; observing them again")
    rest = [i for i in range(len(seen.layers)) if i not in again] if seen.means else []
    qparams = {i: act_qparams(*first[seen.layers[i].name]["input"], act_dtype) for i in rest}

    def observe(values: list[np.ndarray]) -> None:
        scaled = seen.scaled(values)
        for i in again:
            seen.hists[i].add(scaled[i])
        seen.observe_errors(rest, qparams, scaled)

    passes.run(" (equalized layers)", observe)
    return rest


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
