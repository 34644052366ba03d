"""One build that runs the model with any pruned weights: each prunable layer's weight and an
output shift (its bias correction) are inputs of `main`, not constants. Sensitivity, the
`--max-drop` search and the accuracy benchmark score any choice of layers and levels with it,
without compiling the model again (int8 does the same with its probe graph)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...build import build_runner
from ..common.layers import Layer, find_layers


def _shift_shape(layer: Layer) -> list[int]:
    """The broadcast shape of a per-output-channel vector on the layer's output."""
    ndim = len(layer.var.ty.shape.values)
    shape = [1] * ndim
    axis = 1 if layer.kind == "conv2d" else ndim - 1
    shape[axis] = layer.weight_shape[layer.weight_axis]
    return shape


@mutator
class _Inputs(PyExprMutator):
    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layers = layers
        self.vars: list[relax.Var] = []
        for ly in layers:
            self.vars.append(
                relax.Var(f"{ly.name}_w", relax.TensorType(ly.weight_shape, "float32"))
            )
            self.vars.append(
                relax.Var(f"{ly.name}_c", relax.TensorType(_shift_shape(ly), "float32"))
            )

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        for i, ly in enumerate(self.layers):
            if ly.call.same_as(call):
                args = [self.visit_expr(a) for a in call.args]
                args[1] = self.vars[2 * i]
                y = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
                return R.subtract(y, self.vars[2 * i + 1])
        return super().visit_call_(call)


class WeightProbe:
    """`run(feed arrays, {layer: weight}, {layer: shift})`: the model's outputs with those
    layers' weights (stored layout) and output shifts; the others keep their own."""

    def __init__(self, mod: tvm.IRModule, names: Sequence[str], target) -> None:
        func = relax.transform.ToNonDataflow()(mod)["main"]
        self.layers = [ly for ly in find_layers(func) if ly.name in set(names)]
        rewriter = _Inputs(self.layers)
        body = rewriter.visit_expr(func)
        params = [*func.params, *rewriter.vars]
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        new["main"] = relax.Function(params, body.body, body.ret_ty, attrs=func.attrs)
        new = relax.transform.ConvertToDataflow()(relax.transform.Normalize()(new))
        self.runner = build_runner(new, target, arg_checks=False)
        self.dense = {ly.name: np.ascontiguousarray(ly.weight, np.float32) for ly in self.layers}
        self.zero = {ly.name: np.zeros(_shift_shape(ly), np.float32) for ly in self.layers}

    def run(
        self,
        arrays: Sequence[np.ndarray],
        weights: Mapping[str, np.ndarray],
        shifts: Mapping[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        extra = []
        for ly in self.layers:
            extra.append(weights.get(ly.name, self.dense[ly.name]))
            c = (shifts or {}).get(ly.name)
            c = None if c is None else np.asarray(c, np.float32)
            extra.append(
                self.zero[ly.name] if c is None else np.reshape(c, self.zero[ly.name].shape)
            )
        return self.runner([*arrays, *extra])
