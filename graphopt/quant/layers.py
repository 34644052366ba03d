"""Which layers can be quantized, named the same way by calibration, the pass and the report.

A layer is a conv2d (NCHW/OIHW, any groups) or a matmul `x @ W` whose weight is an fp32
constant (matmul: 2-D [K, N]). Layers are named `conv2d_<i>` / `matmul_<i>` in binding order of
`main`, so the names are stable for a given graph; the ranges file also records each layer's
weight shape, and the pass refuses ranges that do not match the graph it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .. import _tvm

CONV2D = "relax.nn.conv2d"
MATMUL = "relax.matmul"


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv2d" | "matmul"
    var: relax.Var  # the variable the layer's result is bound to
    call: relax.Call
    weight_axis: int  # output-channel axis of the weight: 0 (OIHW) or 1 ([K, N])

    @property
    def data(self) -> relax.Expr:
        return self.call.args[0]

    @property
    def weight(self) -> np.ndarray:
        return _tvm.constant_value(self.call.args[1])

    @property
    def weight_shape(self) -> list[int]:
        return [int(d) for d in self.call.args[1].ty.shape.values]

    def describe(self) -> str:
        if self.kind == "conv2d":
            a = self.call.attrs
            g = int(a.groups)
            extra = f" groups={g}" if g > 1 else ""
            return f"conv2d {self.weight_shape} stride {[int(s) for s in a.strides]}{extra}"
        return f"matmul {self.weight_shape}"


def _is_const(expr: relax.Expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst)


def _is_f32(expr: relax.Expr) -> bool:
    ty = getattr(expr, "ty", None)
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"


def layer_kind(call: relax.Expr) -> str | None:
    """'conv2d' / 'matmul' if `call` is a quantizable layer, else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    if len(call.args) < 2 or not _is_const(call.args[1]) or _is_const(call.args[0]):
        return None
    if not (_is_f32(call.args[0]) and _is_f32(call.args[1]) and _is_f32(call)):
        return None
    if call.op.name == CONV2D:
        a = call.attrs
        if a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW":
            return "conv2d"
    elif call.op.name == MATMUL and len(call.args[1].ty.shape.values) == 2:
        return "matmul"
    return None


def find_layers(func: relax.Function) -> list[Layer]:
    """Quantizable layers of `func` in binding order."""
    layers: list[Layer] = []
    counts = {"conv2d": 0, "matmul": 0}
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return layers
    for block in body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                continue
            kind = layer_kind(binding.value)
            if kind is None:
                continue
            name = f"{kind}_{counts[kind]}"
            counts[kind] += 1
            axis = 0 if kind == "conv2d" else 1
            layers.append(Layer(name, kind, binding.var, binding.value, axis))
    return layers
