"""The statistics AdaRound (`adaround.py`) fits each layer on: what the quantized model feeds
the layer against what the fp32 model feeds it.

Per layer, over every calibration row, H_q = X_q^T X_q and C = X_q^T X, with X the layer's
input in the fp32 model and X_q its input in the int4 model of the first rounding (every
layer's weights dequantized, each W4A8 layer's input multiplied by its smoothing scale and
rounded per row as the kernels round it, `budget.row_fake_quant`). Fitting Q to X W from X_q
makes a layer correct part of the error its predecessors' rounding left, which fitting on
the fp32 inputs cannot; the predecessors are those of the first rounding, not the learned
ones (one tapped build for the whole model instead of one a layer).
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
from ..int8.calibrate import calibration_runner
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


def quantized_input_stats(
    mod: tvm.IRModule,
    int4: Mapping[str, Int4Weight],
    feeds: Sequence[Mapping[str, np.ndarray]],
    target,
    a8: bool,
    progress: Callable[[str], None] = lambda _m: None,
    windows: Mapping[str, np.ndarray] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """{layer: (H_q, C, H, rows)} for the layers of `int4` (module docstring, H = X^T X),
    float64 sums."""
    layers = find_layers(mod["main"])
    index = {ly.name: i for i, ly in enumerate(layers)}
    picked = [n for n in int4 if n in index]
    progress(f"adaround: building the fp32 and the int4 graph ({len(picked)} layer inputs)")
    run_fp = calibration_runner(mod, target)
    run_q = calibration_runner(fake_quant_module(mod, int4, a8, windows), target)
    params = [p.name for p in mod["main"].params]
    meter = Meter(len(feeds), "adaround inputs", progress, unit="feeds", every=0.5)
    out: dict[str, list] = {}
    for i, feed in enumerate(feeds):
        arrays = [feed[p] for p in params]
        fp, qt = run_fp(arrays), run_q(arrays)
        keep = feed.get(MASK_INPUT)
        for name in picked:
            ly = layers[index[name]]
            x, xq = layer_rows(ly, fp[index[name]], keep), layer_rows(ly, qt[index[name]], keep)
            acc = out.setdefault(name, [0.0, 0.0, 0.0, 0])
            acc[0] = acc[0] + xq.T @ xq
            acc[1] = acc[1] + xq.T @ x
            acc[2] = acc[2] + x.T @ x
            acc[3] += x.shape[0]
        meter.update(i + 1)
    return {n: tuple(a) for n, a in out.items()}


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
) -> tuple[dict[str, Int4Weight], dict[str, dict]]:
    """Every layer of `start` (round-to-nearest int4 on its grid) with AdaRound's learned
    rounding on the quantized model's inputs; ({layer: weight}, {layer: output errors per
    row and output channel, the start's and AdaRound's})."""
    stats = quantized_input_stats(mod, start, feeds, target, a8, progress, windows)
    out, errors = dict(start), {}
    meter = Meter(len(layers), "adaround", progress, unit="layers", every=0.5)
    for i, ly in enumerate(layers):
        if ly.name not in stats:
            continue
        hq, cross, h, rows = stats[ly.name]
        q0 = start[ly.name]
        w = weight_matrix(ly).astype(np.float64)
        ws = w if q0.act_scale is None else w / q0.act_scale[:, None]
        offset = float(((h @ w) * w).sum()) / rows  # ||X W||^2 a row: errors absolute
        out[ly.name], e = adaround(ws, hq / rows, cross @ w / rows, q0, options, offset)
        n = w.shape[1]
        errors[ly.name] = {k: round(v / n, 8) if isinstance(v, float) else v for k, v in e.items()}
        meter.update(i + 1, f"{ly.name} {e['start']:.4g} -> {e['adaround']:.4g}")
    return out, errors
