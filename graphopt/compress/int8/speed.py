"""Is a layer's int8 kernel faster than the fp32 kernel it replaces? Measured on this machine.

int8 is not free: a tiny conv pays for quantizing its fp32 input, and on AVX2 without VNNI a
depthwise integer kernel can lose to the fp32 one. For every quantizable layer this builds, in
one module compiled with the target's stages, two functions per distinct layer shape:
    fp32:  y = clamp(conv2d|matmul(x, W) [+ b])                       what the graph runs today
    int8:  y = clamp(conv2d|matmul(DQ(xq), DQ(Wq)) [+ b]) [-> quantize]  lowered by lower-int8
where, as in the final graph, the int8 input is int8 already when the layer's producer is
another quantizable layer (its kernel requantizes) or a residual add (quantized as a join),
else an fp32 input quantized first (that quantize kernel is part of the int8 cost), and the
output requantizes when the only consumer is a quantizable layer or a residual add. The pair
is timed interleaved; int8 is "slower" when the median int8/fp32 ratio of adjacent calls
exceeds 1 + `margin` (noise). Cross targets cannot run here: nothing is measured. Not modelled:
a layer kept fp32 turns its neighbours' int8 inputs/outputs into fp32 ones (one more quantize
or a dequantizing epilogue each).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R_op

from ...target_infra import Target
from ..common.layers import Layer, find_joins, find_layers
from .qdq import ActQuant, act_qparams, emit_act_qdq, weight_dequantize, weight_qparams

# timer(shape, {"fp32": f, "int8": g}) -> {"fp32": ms, "int8": ms[, "ratio": int8/fp32]}, medians;
# injectable (tests: a fake clock).
Timer = Callable[["LayerShape", Mapping[str, Callable[[], object]]], Mapping[str, float]]
MARGIN = 0.10  # int8 must be more than 10% slower to count as slower (timing noise)


@dataclass(frozen=True)
class LayerShape:
    """What a layer's kernel pair depends on (layers that share it share one measurement)."""

    kind: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    attrs: tuple  # conv2d: strides, padding, dilation, groups
    bias: bool
    lo: float  # clamp folded into the epilogue (relu / relu6 / none)
    hi: float
    int8_input: bool  # the producer's kernel already writes int8
    requant: bool  # the only consumer is a quantized layer: the kernel writes int8


@dataclass(frozen=True)
class LayerTiming:
    fp32_ms: float  # medians
    int8_ms: float
    slower: bool
    ratio: float  # int8 / fp32 (median of paired ratios with the default timer)

    def to_json(self) -> dict:
        return {
            "fp32_ms": round(self.fp32_ms, 4),
            "int8_ms": round(self.int8_ms, 4),
            "int8_over_fp32": round(self.ratio, 3),
            "slower": self.slower,
        }


def default_timer(runs: int = 0) -> Timer:
    """Interleaved runs (A B, B A, ...: `graphopt.timing`), enough for ~60 ms per contestant.

    Returns both medians and `ratio`, the median of int8/fp32 over adjacent pairs of calls: a
    load spike on a busy machine slows both calls of a pair, so the ratio survives it better
    than the ratio of medians."""

    def timer(_shape, fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        import statistics
        import time

        from ...timing import interleaved

        n = runs
        if n <= 0:
            start = time.perf_counter()
            for fn in fns.values():
                fn()
            once = max(time.perf_counter() - start, 1e-6)
            n = int(min(max(0.06 / once, 15), 400))
        t = interleaved(fns, runs=n, warmup=3)
        pairs = zip(t["int8"].samples_ms, t["fp32"].samples_ms)
        ratio = statistics.median(a / max(b, 1e-9) for a, b in pairs)
        return {"fp32": t["fp32"].median_ms, "int8": t["int8"].median_ms, "ratio": ratio}

    return timer


def layer_shapes(mod: tvm.IRModule, layers: Sequence[Layer]) -> dict[str, LayerShape]:
    """Each layer's `LayerShape`, as it will sit in the quantized graph."""
    from ...binding_graph import BindingGraph, epilogue_chain

    graph = BindingGraph(mod["main"], mod)
    layer_vars = {ly.var for ly in layers}
    chains = {}
    for ly in layers:
        channels = ly.weight_shape[ly.weight_axis]
        chains[ly.name] = epilogue_chain(graph, ly.var, ly.kind, channels, True)[:4]
    # int8 tensors in the quantized graph: what layers' kernels write, and residual adds
    # (joins: quantize requantizes their result, and their operands are requantized into)
    joins = {j.var for j in find_joins(mod["main"])}
    int8_out = {chain[0] for chain in chains.values()} | joins
    int8_in = layer_vars | joins
    out = {}
    for ly in layers:
        tail, bias, lo, hi = chains[ly.name]
        users = graph.users.get(tail, [])
        a = ly.call.attrs
        attrs = ()
        if ly.kind == "conv2d":
            attrs = tuple(
                tuple(int(v) for v in getattr(a, k)) for k in ("strides", "padding", "dilation")
            ) + (int(a.groups),)
        out[ly.name] = LayerShape(
            ly.kind,
            tuple(int(d) for d in ly.data.ty.shape.values),
            tuple(ly.weight_shape),
            attrs,
            bias is not None,
            lo,
            hi,
            int8_input=isinstance(ly.data, relax.Var) and ly.data in int8_out,
            requant=len(users) == 1 and users[0] in int8_in,
        )
    return out


def _act(lo: float, hi: float) -> ActQuant:
    return act_qparams(lo, hi, "int8")


def _emit_chain(bb, y, shape: LayerShape, bias: np.ndarray | None):
    if bias is not None:
        b = bias.reshape((1, -1, 1, 1) if shape.kind == "conv2d" else (-1,))
        y = bb.emit(R_op.add(y, relax.const(b.astype(np.float32))))
    if shape.lo > -math.inf or shape.hi < math.inf:
        if shape.lo == 0.0 and shape.hi == math.inf:
            y = bb.emit(R_op.nn.relu(y))
        else:
            lo = shape.lo if shape.lo > -math.inf else -3.4e38
            hi = shape.hi if shape.hi < math.inf else 3.4e38
            y = bb.emit(R_op.clip(y, lo, hi))
    return y


def _op_call(shape: LayerShape, x, w, layer: Layer):
    if shape.kind == "conv2d":
        return relax.Call(layer.call.op, [x, w], layer.call.attrs, layer.call.ty_args)
    return R_op.matmul(x, w)


def pair_module(pairs: Mapping[str, tuple[Layer, LayerShape]]) -> tvm.IRModule:
    """Functions `<key>_fp32(x)` and `<key>_int8(x or xq)` for each (layer, shape)."""
    bb = relax.BlockBuilder()
    rng = np.random.default_rng(0)
    for key, (layer, shape) in pairs.items():
        w = layer.weight
        channels = shape.w_shape[layer.weight_axis]
        bias = rng.standard_normal(channels).astype(np.float32) if shape.bias else None
        act = _act(-4.0, 4.0)
        for prec in ("fp32", "int8"):
            dtype = "int8" if prec == "int8" and shape.int8_input else "float32"
            x = relax.Var("x", relax.TensorType(shape.x_shape, dtype))
            with bb.function(f"{key}_{prec}", [x]):
                with bb.dataflow():
                    if prec == "fp32":
                        y = bb.emit(_op_call(shape, x, relax.const(w), layer))
                    else:
                        if shape.int8_input:
                            s, zp = relax.const(act.scale, "float32"), relax.const(0, "int8")
                            xf = bb.emit(R_op.dequantize(x, s, zp, axis=-1))
                        else:
                            xf = emit_act_qdq(bb, x, act)
                        wq, s_w = weight_qparams(w, layer.weight_axis)
                        wf = bb.emit(weight_dequantize(wq, s_w, layer.weight_axis))
                        y = bb.emit(_op_call(shape, xf, wf, layer))
                    y = _emit_chain(bb, y, shape, bias)
                    if prec == "int8" and shape.requant:
                        s = relax.const(act.scale, "float32")
                        y = bb.emit(R_op.quantize(y, s, relax.const(0, "int8"), axis=-1))
                    out = bb.emit_output(y)
                bb.emit_func_output(out)
    return bb.get()


@dataclass
class KernelPairs:
    """The built pair module: `run(key, prec, x)` calls `<key>_<prec>` on the VM."""

    vm: object
    pairs: dict[str, tuple[Layer, LayerShape]]  # key -> (first layer of that shape, shape)
    key_of: dict[str, str]  # layer name -> key
    lowered: dict  # lower-int8's stats on the pair module

    def inputs(self, key: str, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(fp32 input, int8-kernel input) of a pair, random but fixed."""
        shape = self.pairs[key][1]
        rng = np.random.default_rng(seed)
        x32 = rng.standard_normal(shape.x_shape).astype(np.float32)
        x8 = rng.integers(-100, 100, shape.x_shape).astype(np.int8)
        return x32, (x8 if shape.int8_input else x32)

    def function(self, key: str, prec: str):
        return self.vm[f"{key}_{prec}"]


def build_pairs(
    mod: tvm.IRModule,
    names: Sequence[str] | None = None,
    target: Target | str = "x86",
    target_options: Mapping[str, str] | None = None,
) -> KernelPairs:
    """Build the fp32 and int8 function of every distinct layer shape, with the target's stages
    (the same `lower-int8` and schedules as the final artifact)."""
    from ...build import compile_module, resolve_target
    from ...pass_infra import make_pass

    layers = [ly for ly in find_layers(mod["main"]) if names is None or ly.name in names]
    shapes = layer_shapes(mod, layers)
    keys: dict[LayerShape, str] = {}
    pairs: dict[str, tuple[Layer, LayerShape]] = {}
    for ly in layers:
        if shapes[ly.name] not in keys:
            keys[shapes[ly.name]] = key = f"k{len(keys)}"
            pairs[key] = (ly, shapes[ly.name])
    pm = pair_module(pairs)
    tgt = resolve_target(target, target_options)
    with tgt.tvm_target():
        lowered = make_pass("lower-int8", tgt.pass_options("lower-int8")).run(pm)
    executable = compile_module(lowered.module, tgt)  # what the artifact ships
    vm = relax.VirtualMachine(executable, tgt.device())
    key_of = {ly.name: keys[shapes[ly.name]] for ly in layers}
    return KernelPairs(vm, pairs, key_of, dict(lowered.stats))


def measure(
    mod: tvm.IRModule,
    names: Sequence[str] | None = None,
    *,
    target: Target | str = "x86",
    target_options: Mapping[str, str] | None = None,
    timer: Timer | None = None,
    margin: float = MARGIN,
    progress: Callable[[str], None] | None = None,
) -> dict[str, LayerTiming]:
    """int8-vs-fp32 kernel times of the layers `names` (default: all) on this machine."""
    say = progress or (lambda _m: None)
    n = len(find_layers(mod["main"])) if names is None else len(names)
    say(f"speed check: building int8 and fp32 kernels of {n} layers")
    kp = build_pairs(mod, names, target, target_options)
    result = time_pairs(kp, timer, margin)
    say(f"speed check: timed {len(kp.pairs)} distinct int8/fp32 kernel pairs")
    return result


def time_pairs(
    kp: KernelPairs, timer: Timer | None = None, margin: float = MARGIN
) -> dict[str, LayerTiming]:
    """Time each pair (interleaved medians by default) and decide per layer."""
    timer = timer or default_timer()
    times: dict[str, tuple[float, float]] = {}
    for key, (_, shape) in kp.pairs.items():
        x32, x8 = (tvm.runtime.tensor(a) for a in kp.inputs(key))
        f32, f8 = kp.function(key, "fp32"), kp.function(key, "int8")
        med = timer(shape, {"fp32": lambda f=f32, x=x32: f(x), "int8": lambda f=f8, x=x8: f(x)})
        fp32_ms, int8_ms = float(med["fp32"]), float(med["int8"])
        ratio = float(med.get("ratio", int8_ms / max(fp32_ms, 1e-12)))
        times[key] = LayerTiming(fp32_ms, int8_ms, ratio > 1 + margin, ratio)
    return {name: times[key] for name, key in kp.key_of.items()}
