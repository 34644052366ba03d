"""Sequential AdaRound (`adaround.py`) over a model: each layer in graph order fitted on the
inputs the int4 model gives it, with every earlier layer already learned.

X is a layer's input in the fp32 model, X_q its input in the int4 model: every earlier
layer's learned int4 values, the later ones' round-to-nearest ones (they do not reach it),
the depthwise and stem convs' int8 weights, and each W4A8 layer's input multiplied by its
smoothing scale and rounded per row as the kernels round it (`budget.row_fake_quant`).
Fitting Q to X W from X_q makes a layer correct part of the error its predecessors' rounding
left, which fitting on the fp32 inputs cannot. Both come from two builds: the fp32 graph
tapped once per feed, and the int4 graph with the layers' weights as inputs
(`prune.probe.WeightProbe` over the tapped graph), run once per layer and feed with the
weights learned so far. Rows: up to 4096 a layer, evenly spaced in each feed (a CNN's
feed has thousands of pixels), the same rows of X and X_q.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R_op
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...progress import Meter
from ..common.layers import Layer, find_layers
from ..int8.calibrate import calibration_runner, tap_module
from ..prune.probe import WeightProbe
from .adaround import AdaRoundOptions, adaround
from .budget import row_fake_quant
from .hessian import MASK_INPUT, layer_rows
from .layers import layer_weight, weight_matrix
from .quant import Int4Weight


@mutator
class _FakeQuant(PyExprMutator):
    def __init__(self, layers: list[Layer], int4: Mapping[str, Int4Weight], a8: bool, windows):
        super().__init__()
        self.layers, self.int4, self.a8, self.windows = layers, int4, a8, windows

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        layer = next((ly for ly in self.layers if ly.call.same_as(call)), None)
        if layer is not None and layer.name in self.windows:
            w = relax.const(self.windows[layer.name])
            return relax.Call(call.op, [self.visit_expr(call.args[0]), w], call.attrs, call.ty_args)
        if layer is None or layer.name not in self.int4:
            return super().visit_call_(call)
        q = self.int4[layer.name]
        conv = layer.kind == "conv2d"
        x = self.visit_expr(call.args[0])
        if q.act_scale is not None:
            a = q.act_scale.reshape(-1, 1, 1) if conv else q.act_scale
            x = self.builder_.emit(R_op.multiply(x, relax.const(a.astype(np.float32))))
        if self.a8:
            x = row_fake_quant(self.builder_, x, axis=1 if conv else -1)
        w = relax.const(layer_weight(layer, q.dequantize()))
        return relax.Call(call.op, [x, w], call.attrs, call.ty_args)


def fake_quant_module(
    mod: tvm.IRModule,
    int4: Mapping[str, Int4Weight],
    a8: bool,
    windows: Mapping[str, np.ndarray] | None = None,
) -> tvm.IRModule:
    """`mod` computing with the int4 weights' values (and W4A8's rounded inputs) and the
    `windows` convs' int8 weights ({conv: dequantized OIHW}); its layers keep their names and
    order (`find_layers`), their inputs being the quantized ones."""
    func = relax.transform.ToNonDataflow()(mod)["main"]
    body = _FakeQuant(find_layers(func), int4, a8, windows or {}).visit_expr(func)
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    new["main"] = relax.Function(func.params, body.body, body.ret_ty, attrs=func.attrs)
    return relax.transform.ConvertToDataflow()(relax.transform.Normalize()(new))


def _pick(x: np.ndarray, per_feed: int) -> np.ndarray:
    """Up to `per_feed` evenly spaced rows of x (the same rows for the same shape)."""
    if len(x) <= per_feed:
        return x
    return x[np.linspace(0, len(x) - 1, per_feed).astype(np.int64)]


def adaround_model(
    mod: tvm.IRModule,
    layers: Sequence[Layer],
    start: Mapping[str, Int4Weight],
    feeds: Sequence[Mapping[str, np.ndarray]],
    target,
    a8: bool,
    options: AdaRoundOptions | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    windows: Mapping[str, np.ndarray] | None = None,
    rows: int = 4096,
) -> tuple[dict[str, Int4Weight], dict[str, dict]]:
    """Every layer of `start` (round-to-nearest int4 on its grid) in graph order, with
    AdaRound's learned rounding on the inputs the int4 model with every earlier layer already
    learned gives it (module docstring), on up to `rows` calibration rows a layer (evenly
    spaced in each feed); ({layer: weight}, {layer: output errors per row and channel, the
    start's and AdaRound's}). `windows`: the int8 convs' weights (`fake_quant_module`)."""
    names = [ly.name for ly in layers if ly.name in start]
    progress(f"adaround: building the fp32 graph and the int4 graph ({len(names)} layers)")
    run_fp = calibration_runner(mod, target)
    probe = WeightProbe(tap_module(fake_quant_module(mod, start, a8, windows))[0], names, target)
    index = {ly.name: i for i, ly in enumerate(find_layers(mod["main"]))}
    params = [p.name for p in mod["main"].params]
    per_feed = max(1, rows // max(len(feeds), 1))
    dense: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:  # the fp32 inputs, kept: every layer's fit reads them
        taps = run_fp([feed[p] for p in params])
        for ly in layers:
            if ly.name in dense:
                x = layer_rows(ly, taps[index[ly.name]], feed.get(MASK_INPUT))
                dense[ly.name].append(_pick(x, per_feed))
    out, errors, learned = dict(start), {}, {}
    meter = Meter(len(names), "adaround", progress, unit="layers", every=0.5)
    for i, ly in enumerate(ly for ly in layers if ly.name in start):
        xq = []
        for feed in feeds:
            taps = probe.run([feed[p] for p in params], learned)
            x = layer_rows(ly, taps[index[ly.name]], feed.get(MASK_INPUT))
            xq.append(_pick(x, per_feed))
        out[ly.name], e = _fit(ly, start[ly.name], np.concatenate(xq), dense[ly.name], options)
        learned[ly.name] = layer_weight(ly, out[ly.name].dequantize())
        errors[ly.name] = e
        meter.update(i + 1, f"{ly.name} {e['start']:.4g} -> {e['adaround']:.4g}")
    return out, errors


def _fit(ly: Layer, q0: Int4Weight, xq: np.ndarray, xd: list[np.ndarray], options):
    """AdaRound of one layer on its rows: quantized inputs xq, fp32 inputs xd."""
    x = np.concatenate(xd)
    w = weight_matrix(ly).astype(np.float64)
    ws = w if q0.act_scale is None else w / q0.act_scale[:, None]
    y = x @ w
    q, e = adaround(ws, xq, y, q0, options)
    n = w.shape[1]
    return q, {k: round(v / n, 8) if isinstance(v, float) else v for k, v in e.items()}
