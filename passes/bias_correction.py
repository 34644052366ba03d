"""Subtract each quantized layer's calibrated mean quantization error from its bias.

The int8 flow runs it before `quantize`: calibration writes one correction per output channel
into the ranges file (the closed form and why: graphopt/compress/int8/bias_correction.py).
A layer whose only user is `add(y, constant channel vector)` gets the correction folded into
that constant; others get an `add` of their own, which `lower-int8` then takes as the kernel's
bias.

    before:  y = conv2d(x, W); z = add(y, b)
    after:   y = conv2d(x, W); z = add(y, b - c)        c: the layer's correction

Pruning (`--prune`) runs it after `prune` with `corrections=FILE` (an .npz of each layer's
mean output shift from its removed weights) instead of a ranges file.

Counters: `corrected` (layers), `bias_folded` (corrections folded into an existing bias).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R_op
from tvm.relax.expr_functor import PyExprMutator, mutator

from graphopt import _tvm
from graphopt.compress.common.layers import Layer, find_layers
from graphopt.compress.int8.bias_correction import KEY
from graphopt.compress.int8.ranges import ranges_option
from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, PassResult, register_pass


@register_pass
class BiasCorrect(GraphPass):
    """Subtract each layer's calibrated mean quantization error from its bias (ranges file)."""

    name = "bias-correction"

    @dataclass(frozen=True)
    class Options:
        ranges: str = ""  # the ranges file calibration wrote, with bias_correction entries
        skip: tuple[str, ...] = ()  # layers kept fp32 (as given to quantize): no correction
        # instead of ranges: an .npz {layer: correction} (pruning writes one, compress/prune)
        corrections: str = ""

    def run(self, mod: tvm.IRModule) -> PassResult:
        if not self.options.ranges and not self.options.corrections:
            raise PipelineError("bias-correction needs ranges=FILE or corrections=FILE")
        ranges = _corrections(self.options.corrections) or ranges_option(self.options.ranges)
        layers = [
            ly
            for ly in find_layers(mod["main"])
            if KEY in ranges.get(ly.name, {}) and ly.name not in self.options.skip
        ]
        plan = {}
        for ly in layers:
            c = np.asarray(ranges[ly.name][KEY], np.float32)
            if list(ranges[ly.name]["weight_shape"]) != ly.weight_shape:
                raise PipelineError(
                    f"bias-correction: {self.options.ranges or self.options.corrections} does not "
                    f"match this graph (layer {ly.name})"
                )
            if c.shape != (ly.weight_shape[ly.weight_axis],):
                raise PipelineError(f"bias-correction: {ly.name} correction has shape {c.shape}")
            plan[ly.name] = (ly, c)
        if not plan:
            return PassResult(mod, False, {"corrected": 0})
        rewriter = _Correct(mod["main"], plan)
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        new["main"] = rewriter.visit_expr(mod["main"])
        new = relax.transform.Normalize()(new)
        stats = {"corrected": len(plan), "bias_folded": rewriter.folded}
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)


def _corrections(path: str) -> dict[str, dict]:
    """A corrections .npz as ranges entries ({layer: {weight_shape, bias_correction}})."""
    if not path:
        return {}
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise PipelineError(f"bias-correction: cannot read corrections {path}: {err}") from err
    layers = {k[: -len(".shape")] for k in arrays if k.endswith(".shape")}
    return {
        n: {"weight_shape": arrays[f"{n}.shape"].tolist(), KEY: arrays[f"{n}.c"]} for n in layers
    }


def _bias_adds(func: relax.Function, plan: Mapping) -> dict:
    """{add call: (layer, correction)} for layers whose only user is `add(y, const channel
    vector)`: the correction folds into that constant (lower-int8 still sees a bias)."""
    users: dict = {}
    bound: dict = {}
    for block in func.body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                continue
            bound[b.var] = b.value
            args = b.value.args if isinstance(b.value, relax.Call) else []
            for a in args:
                if isinstance(a, relax.Var):
                    users.setdefault(a, []).append(b.value)
    adds = {}
    for ly, c in plan.values():
        use = users.get(ly.var, [])
        if len(use) != 1 or not isinstance(use[0], relax.Call) or _op(use[0]) != "relax.add":
            continue
        add = use[0]
        other = add.args[1] if add.args[0].same_as(ly.var) else add.args[0]
        other = bound.get(other, other)
        if not isinstance(other, tvm.ir.GenericConst):
            continue
        b = _tvm.constant_value(other)
        if b.dtype == np.float32 and b.size == c.size and _channel_axis_ok(b, ly):
            adds[add] = (ly, b, c)
    return adds


def _channel_axis_ok(b: np.ndarray, ly: Layer) -> bool:
    """The constant varies along the output-channel axis only (of an NCHW / [.., N] output)."""
    ndim = len(ly.var.ty.shape.values)
    shape = (1,) * (ndim - b.ndim) + b.shape
    axis = 1 if ly.kind == "conv2d" else ndim - 1
    return b.ndim <= ndim and all(d == 1 for i, d in enumerate(shape) if i != axis)


def _op(call: relax.Call) -> str:
    return call.op.name if isinstance(call.op, tvm.ir.Op) else ""


@mutator
class _Correct(PyExprMutator):
    def __init__(self, func: relax.Function, plan: Mapping) -> None:
        super().__init__()
        self.adds = _bias_adds(func, plan)
        folded = {ly.name for ly, _, _ in self.adds.values()}
        self.direct = [(ly.call, ly, c) for ly, c in plan.values() if ly.name not in folded]
        self.folded = len(folded)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        for add, (ly, b, c) in self.adds.items():
            if add.same_as(call):
                args = [self.visit_expr(a) for a in call.args]
                new_b = relax.const((b - c.reshape(b.shape)).astype(np.float32))
                i = 1 if call.args[0].same_as(ly.var) else 0
                args[i] = new_b
                return relax.Call(call.op, args, call.attrs, call.ty_args)
        for orig, ly, c in self.direct:
            if orig.same_as(call):
                y = self.builder_.emit(super().visit_call_(call))
                ndim = len(ly.var.ty.shape.values)
                shape = [1] * ndim
                shape[1 if ly.kind == "conv2d" else ndim - 1] = -1
                # an add, so that lower-int8 takes the correction as the kernel's bias
                return R_op.add(y, relax.const(-c.reshape(shape).astype(np.float32)))
        return super().visit_call_(call)
