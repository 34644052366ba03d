"""One build for calibration and sensitivity: the probe graph.

Calibration needs the fp32 graph with every layer input (and residual join) as an output;
sensitivity and the `--max-drop` search need the graph with any subset of layers
fake-quantized. Both used to be separate builds, and the second one could only start after
calibration, because the activation ranges, bias corrections and equalized weights were
baked into it as constants. Here they are inputs instead, so one graph serves every step:

    main(*inputs, f_1..f_n, s_1..s_n, zp_1..zp_n, C_1..C_n, K_1..K_m, joins...)
        -> (layer inputs..., join operands and results..., outputs...)

Per layer i with flag f_i, activation scale s_i and zero point zp_i, each a [1] tensor (see
`sensitivity.py` for the math):
    x_i' = x_i + f_i * (QDQ(K_i * x_i; s_i, zp_i) / K_i - x_i)
    W_i' = W_i + f_i * D_i                    (D_i = DQ(Q(W_i)) - W_i, a numpy constant)
    y_i  = layer(x_i', W_i') - f_i * C_i      (C_i: the layer's bias correction)
K_i (per input channel, only for a depthwise layer with an equalization producer) is the
equalization of `equalize.py`: the equalized graph quantizes K x with weights W / K, which for
a depthwise conv is the same product as QDQ(K x) / K with weights W; the producer's scaled
weights and bias are per-channel exact, up to the relu6 bound K never crosses on the
calibration samples. f = 0 is the fp32 graph exactly, whatever the other inputs hold, so
calibration runs it before any range is known; ranges, corrections and equalization change
inputs, not the build, and the weights stay constants (as fast to build as the plain graph).
The fp32 outputs of the feeds calibration ran are kept: sensitivity's reference is free.

Residual joins (static mode) are units like layers, with a flag g_j and each operand's scale
and zero point as inputs:  y_j = a' + b',  a' = a + g_j * (QDQ(a; s_a, zp_a) - a).
The `quantize` pass quantizes a join's operands (and through them, the block stays int8)
with one range per tensor: the first quantized layer reading it, else the first quantized
join's; `ProbeRunner` picks the same range per run from the flags (`_join_args`),
so any subset of flags is the arithmetic of the graph `quantize` makes for that subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R_op
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...artifact import flatten_outputs
from ...build import compile_module
from ...target_infra import Target
from ..common.layers import Join, Layer, find_joins, find_layers
from .bias_correction import KEY as BIAS_KEY
from .calibrate import tap_module
from .equalize import find_pairs
from .qdq import QRANGE, act_qparams, dequant_weight_np, emit_dynamic_qdq, weight_qparams

FP32_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class Settings:
    mode: str = "static"
    per_channel: bool = True
    act_dtype: str = "int8"
    granularity: str = "tensor"


JOIN_KEYS = ("input", "input_b", "output")  # a join's ranges entry: a, b, a + b


@dataclass
class ProbeModule:
    mod: tvm.IRModule
    layers: list[Layer]  # in flag order
    taps: int  # leading outputs that are taps (layer inputs, then 3 per join)
    equalized: list[int]  # layers with an equalization input K, in input order
    joins: list[Join]  # flags after the layers' (static mode)
    # per join and operand (a, b): who may give the operand tensor its range, in the
    # quantize pass's order: the layers reading it, then (join, key) of the joins holding it
    sources: list[tuple[tuple[list[int], list[tuple[int, str]]], ...]]

    @property
    def units(self) -> list[Layer | Join]:
        """What the flags address: layers, then joins."""
        return [*self.layers, *self.joins]


def probe_module(mod: tvm.IRModule, settings: Settings, taps: bool = True) -> ProbeModule:
    """The probe graph of `mod` (module docstring); `taps=False` leaves out the taps."""
    src = tap_module(mod)[0] if taps else relax.transform.ToNonDataflow()(mod)
    func = src["main"]
    layers = find_layers(func)
    # pairs of `mod` itself: in the tap graph every depthwise input is also an output, and a
    # pair needs its links single-use (layer names are the same in both)
    consumers = {p.consumer.name for p in find_pairs(mod)} if settings.mode == "static" else ()
    equalized = [i for i, ly in enumerate(layers) if ly.name in consumers]
    joins = find_joins(func) if settings.mode == "static" else []
    rewriter = _Probe(layers, equalized, settings, joins)
    body = rewriter.visit_expr(func)
    params = [*func.params, *rewriter.inputs()]
    new_func = relax.Function(params, body.body, body.ret_ty, attrs=func.attrs)
    new = tvm.IRModule(dict(src.functions.items()), attrs=src.attrs)
    new["main"] = new_func
    n_taps = len(layers) + 3 * len(find_joins(func)) if taps else 0
    # back into a dataflow block (see tap_module)
    new = relax.transform.ConvertToDataflow()(relax.transform.Normalize()(new))
    sources = [tuple(_sources(t, layers, joins) for t in j.call.args) for j in joins]
    return ProbeModule(new, layers, n_taps, equalized, joins, sources)


def _sources(tensor: relax.Expr, layers: list[Layer], joins: list[Join]):
    readers = [i for i, ly in enumerate(layers) if ly.data.same_as(tensor)]
    holders = [(j, key) for j, jn in enumerate(joins) for t, key in zip(jn.tensors, JOIN_KEYS)
               if t.same_as(tensor)]  # fmt: skip
    return readers, holders


def _param(name: str, shape: Sequence[int], dtype: str = "float32") -> relax.Var:
    return relax.Var(name, relax.TensorType([int(d) for d in shape], dtype))


def _channel_shape(ndim: int, axis: int, channels: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def _corr_shape(layer: Layer) -> list[int]:
    """The bias correction laid out to broadcast over the layer's output channels."""
    ndim = len(layer.call.ty.shape.values)
    if layer.kind == "conv2d":
        return _channel_shape(ndim, 1, layer.weight_shape[0])
    return _channel_shape(ndim, ndim - 1, layer.weight_shape[1])


def _k_shape(layer: Layer) -> list[int]:
    """An equalization K laid out over a depthwise layer's NCHW input channels."""
    return _channel_shape(4, 1, layer.weight_shape[0])


@mutator
class _Probe(PyExprMutator):
    def __init__(self, layers, equalized: list[int], settings: Settings, joins) -> None:
        super().__init__()
        self.s = settings
        self.layers = layers
        self.joins = {j.var: j for j in joins}
        # per join: flag, then scale and zero point of operand a, of operand b
        self.join_inputs = [
            [_param(f"{q}_{j.name}", [1]) for q in ("g", "sa", "za", "sb", "zb")] for j in joins
        ]
        # one [1] input per layer and quantity: slicing one vector cost a kernel per slice
        # (as many kernels again as the model has: twice the build time)
        self.flags = [_param(f"f_{ly.name}", [1]) for ly in layers]
        self.scale = [_param(f"s_{ly.name}", [1]) for ly in layers]
        self.zp = [_param(f"zp_{ly.name}", [1]) for ly in layers]  # float32: whole numbers
        self.c = [_param(f"c_{ly.name}", _corr_shape(ly)) for ly in layers]
        self.k = {i: _param(f"k_{layers[i].name}", _k_shape(layers[i])) for i in equalized}

    def inputs(self) -> list[relax.Var]:
        joins = [v for per_join in self.join_inputs for v in per_join]
        return [*self.flags, *self.scale, *self.zp, *self.c, *self.k.values(), *joins]

    def _qdq(self, x: relax.Expr, i: int) -> relax.Expr:
        if self.s.mode == "dynamic":
            return emit_dynamic_qdq(self.builder_, x, self.s.granularity == "row")
        return self._qdq_with(x, self.scale[i], self.zp[i], self.k.get(i))

    def _qdq_with(self, x: relax.Expr, s, zp, k=None) -> relax.Expr:
        """QDQ in float ops (round(x / s) + zp, clipped, minus zp, times s: the arithmetic
        of TVM's quantize and dequantize): with run-time s and zp, relax.quantize's kernels
        fused and scheduled badly (a graph twice as slow to build and to run)."""
        bb = self.builder_
        xk = x if k is None else bb.emit(R_op.multiply(x, k))
        qmin, qmax = QRANGE[self.s.act_dtype]
        q = R_op.clip(R_op.add(R_op.round(R_op.divide(xk, s)), zp), qmin, qmax)
        xq = bb.emit(R_op.multiply(R_op.subtract(q, zp), s))
        return xq if k is None else bb.emit(R_op.divide(xq, k))

    def _mix(self, x: relax.Expr, xq: relax.Expr, f: relax.Var) -> relax.Expr:
        """x + f * (xq - x): x exactly at f = 0, xq at f = 1."""
        return self.builder_.emit(R_op.add(x, R_op.multiply(f, R_op.subtract(xq, x))))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        join = self.joins.get(binding.var)
        if join is None:
            super().visit_var_binding_(binding)
            return
        g, sa, za, sb, zb = self.join_inputs[list(self.joins).index(binding.var)]
        a, b = (self.visit_expr(arg) for arg in join.call.args)
        a = self._mix(a, self._qdq_with(a, sa, za), g)
        b = self._mix(b, self._qdq_with(b, sb, zb), g)
        value = self.builder_.normalize(R_op.add(a, b))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        i = next((i for i, ly in enumerate(self.layers) if ly.call.same_as(call)), None)
        if i is None:
            return super().visit_call_(call)
        bb, layer = self.builder_, self.layers[i]
        f = self.flags[i]
        x = self.visit_expr(call.args[0])
        x_mix = self._mix(x, self._qdq(x, i), f)
        w = self.visit_expr(call.args[1])
        # DQ(Wq) - W as one constant (numpy, the same float32 math as TVM's dequantize):
        # dequantizing every weight at run time made the graph slow to build and to run.
        delta = relax.const(_weight_delta(layer, np.asarray(layer.weight, np.float32), self.s))
        w_mix = bb.emit(R_op.add(w, R_op.multiply(f, delta)))
        y = bb.emit(relax.Call(call.op, [x_mix, w_mix], call.attrs, call.ty_args))
        return R_op.subtract(y, R_op.multiply(f, self.c[i]))


class ProbeRunner:
    """The built probe graph; `configure` sets the quantization inputs, then `taps` and
    `outputs` run it on one feed with given flags."""

    def __init__(self, probe: ProbeModule, target: Target) -> None:
        self.probe = probe
        self.vm = relax.VirtualMachine(compile_module(probe.mod, target), target.device())
        self.fixed: list = []
        self._layer_q: tuple[np.ndarray, np.ndarray] = (np.ones(0), np.zeros(0))
        self._join_q: dict[tuple[int, str], tuple[float, float]] = {}
        self._scalars: dict[float, object] = {}
        self._fp32: list[tuple[list, list[np.ndarray]]] = []
        self._fp32_bytes = 0
        self._one = tvm.runtime.tensor(np.ones(1, np.float32))
        self._zero = tvm.runtime.tensor(np.zeros(1, np.float32))
        self.configure({}, {}, Settings())

    @property
    def n(self) -> int:
        """How many flags: one per layer, then one per join."""
        return len(self.probe.layers) + len(self.probe.joins)

    def configure(
        self,
        ranges: Mapping[str, dict],
        scales: Mapping[str, np.ndarray],
        settings: Settings,
    ) -> None:
        """Activation ranges and bias corrections from `ranges`, equalization K per depthwise
        layer from `scales` (missing: 1)."""
        layers = self.probe.layers
        corr = [_correction(ly, ranges, settings) for ly in layers]
        ks = [_k_input(layers[i], scales.get(layers[i].name)) for i in self.probe.equalized]
        scale, zp = _act_inputs(layers, ranges, settings)
        arrays = [*scale.reshape(-1, 1), *zp.reshape(-1, 1), *corr, *ks]
        self.fixed = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
        self._layer_q = (scale, zp)
        self._join_q = {
            (j, key): _qparams(ranges[join.name][key], settings)
            for j, join in enumerate(self.probe.joins)
            if join.name in ranges
            for key in JOIN_KEYS
        }

    def _run(self, inputs: Sequence[np.ndarray], flags: np.ndarray):
        flags = np.asarray(flags)
        if flags.shape != (self.n,):
            raise ValueError(f"{self.n} flags expected (layers, then joins), got {flags.shape}")
        on = [self._one if f else self._zero for f in flags]
        args = [tvm.runtime.tensor(a) for a in inputs]
        joins = self._join_args(flags)
        out = self.vm["main"](*args, *on[: len(self.probe.layers)], *self.fixed, *joins)
        return [out] if hasattr(out, "numpy") else list(out)

    def _join_args(self, flags: np.ndarray) -> list:
        """Per join: its flag, then each operand's (scale, zero point) as `quantize` picks
        them for this set of flags (the first flagged layer reading the tensor, else the
        first flagged join holding it)."""
        n_layers, (scale, zp) = len(self.probe.layers), self._layer_q
        args: list = []
        for j, operands in enumerate(self.probe.sources):
            args.append(self._one if flags[n_layers + j] else self._zero)
            for readers, holders in operands:
                layer = next((i for i in readers if flags[i]), None)
                if layer is not None:
                    q = (scale[layer], zp[layer])
                else:
                    held = (h for h in holders if flags[n_layers + h[0]] and h in self._join_q)
                    q = self._join_q.get(next(held, None), (1.0, 0.0))
                args += [self._scalar(v) for v in q]
        return args

    def _scalar(self, value: float):
        """A [1] float32 tensor of `value`, made once (every run passes ~4 per join)."""
        hit = self._scalars.get(value)
        if hit is None:
            hit = self._scalars[value] = tvm.runtime.tensor(np.full(1, value, np.float32))
        return hit

    def taps(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The fp32 graph's taps (every flag 0); its outputs are kept for `outputs`."""
        out = self._run(inputs, np.zeros(self.n, np.float32))
        self._remember(inputs, flatten_outputs(out[self.probe.taps :]))
        return [t.numpy() for t in out[: self.probe.taps]]

    def outputs(self, inputs: Sequence[np.ndarray], flags: np.ndarray) -> list[np.ndarray]:
        cached = None if np.any(flags) else self._cached(inputs)
        if cached is not None:  # fp32, and calibration ran this feed already
            return cached
        out = self._run(inputs, flags)
        return flatten_outputs(out[self.probe.taps :])

    def _cached(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        for arrays, outputs in self._fp32:
            if len(arrays) == len(inputs) and all(a is b for a, b in zip(arrays, inputs)):
                return outputs
        return None

    def _remember(self, inputs: Sequence[np.ndarray], outputs: list[np.ndarray]) -> None:
        """Keep fp32 outputs (sensitivity's reference, often on the calibration feeds) up to
        FP32_CACHE_BYTES; inputs are kept with them and matched by identity."""
        size = sum(o.nbytes for o in outputs)
        if self._fp32_bytes + size <= FP32_CACHE_BYTES and self._cached(inputs) is None:
            self._fp32.append((list(inputs), outputs))
            self._fp32_bytes += size


def _k_input(layer: Layer, k: np.ndarray | None) -> np.ndarray:
    shape = _k_shape(layer)
    return np.ones(shape, np.float32) if k is None else np.asarray(k, np.float32).reshape(shape)


def _weight_delta(layer: Layer, w: np.ndarray, settings: Settings) -> np.ndarray:
    """DQ(Q(W)) - W in numpy: the same float32 math as TVM's dequantize."""
    wq, s_w = weight_qparams(w, layer.weight_axis, settings.per_channel)
    return dequant_weight_np(wq, s_w, layer.weight_axis) - w


def _correction(layer: Layer, ranges: Mapping[str, dict], settings: Settings) -> np.ndarray:
    shape = _corr_shape(layer)
    corr = ranges.get(layer.name, {}).get(BIAS_KEY) if settings.mode == "static" else None
    if corr is None:
        return np.zeros(shape, np.float32)
    return np.asarray(corr, np.float32).reshape(shape)


def _qparams(lohi: Sequence[float], settings: Settings) -> tuple[float, float]:
    """(scale, zero point) of a range, as `quantize` computes them."""
    qmin, qmax = QRANGE[settings.act_dtype]
    q = act_qparams(*lohi, settings.act_dtype)
    return float(np.float32(q.scale)), float(np.clip(q.zero_point, qmin, qmax))


def _act_inputs(layers: list[Layer], ranges: Mapping[str, dict], settings: Settings):
    """Per-layer activation scale and zero point; a layer without a range gets (1, 0) (only
    flag 0 may select it)."""
    scale = np.ones(len(layers), np.float32)
    zp = np.zeros(len(layers), np.float32)
    for i, layer in enumerate(layers):
        entry = ranges.get(layer.name)
        if entry is None or settings.mode != "static":
            continue
        scale[i], zp[i] = _qparams(entry["input"], settings)
    return scale, zp
