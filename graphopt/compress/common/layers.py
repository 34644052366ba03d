"""Which layers can be quantized, named the same way by calibration, the pass and the report.

A layer is a conv2d (NCHW/OIHW, any groups) or a matmul `x @ W` whose weight is an fp32
constant (matmul: 2-D [K, N]). Layers are named `conv2d_<i>` / `matmul_<i>` in binding order of
`main`, so the names are stable for a given graph; the ranges file also records each layer's
weight shape, and the pass refuses ranges that do not match the graph it is given.

A join is a residual `add` of two 4-D activations of the same shape (`add_<i>`): calibration
also observes its operands and result, so the quantize pass can keep the block int8 through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ... import _tvm
from ...binding_graph import shape_dims

CONV2D = "relax.nn.conv2d"
MATMUL = "relax.matmul"
ADD = "relax.add"


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv2d" | "matmul"
    var: relax.Var  # the variable the layer's result is bound to
    call: relax.Call
    weight_axis: int  # output-channel axis of the weight: 0 (OIHW) or 1 ([K, N])
    weight_const: relax.Expr  # the constant (call.args[1], or what that variable is bound to)

    @property
    def data(self) -> relax.Expr:
        return self.call.args[0]

    @property
    def weight(self) -> np.ndarray:
        return _tvm.constant_value(self.weight_const)

    @property
    def weight_shape(self) -> list[int]:
        return [int(d) for d in self.weight_const.ty.shape.values]

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


def layer_kind(call: relax.Expr, weight: relax.Expr | None = None) -> str | None:
    """'conv2d' / 'matmul' if `call` is a quantizable layer (its weight, `call.args[1]` or the
    constant that variable is bound to, is constant), else None."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    if len(call.args) < 2:
        return None
    weight = call.args[1] if weight is None else weight
    if not _is_const(weight) or _is_const(call.args[0]):
        return None
    if not (_is_f32(call.args[0]) and _is_f32(weight) and _is_f32(call)):
        return None
    if call.op.name == CONV2D:
        a = call.attrs
        if a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW":
            return "conv2d"
    elif call.op.name == MATMUL and len(weight.ty.shape.values) == 2:
        return "matmul"
    return None


def find_layers(func: relax.Function) -> list[Layer]:
    """Quantizable layers of `func` in binding order."""
    layers: list[Layer] = []
    counts = {"conv2d": 0, "matmul": 0}
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return layers
    consts: dict = {}  # variables bound to constants (TVM's importer leaves some)
    for block in body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                continue
            if _is_const(binding.value):
                consts[binding.var] = binding.value
            value = binding.value
            if not isinstance(value, relax.Call) or len(value.args) < 2:
                continue
            weight = consts.get(value.args[1], value.args[1])
            kind = layer_kind(value, weight)
            if kind is None:
                continue
            name = f"{kind}_{counts[kind]}"
            counts[kind] += 1
            axis = 0 if kind == "conv2d" else 1
            layers.append(Layer(name, kind, binding.var, value, axis, weight))
    return layers


def quantized_inputs(func: relax.Function, layers: list[Layer]) -> set[str]:
    """Layers whose input is already dequantize(quantize(x)) with constant scalar parameters
    (an imported QDQ model): the names of those layers."""
    bound: dict = {}
    body = func.body
    for block in body.blocks if isinstance(body, relax.SeqExpr) else []:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                bound[b.var] = b.value

    def static_call(expr, op: str):
        value = bound.get(expr) if isinstance(expr, relax.Var) else None
        ok = (
            isinstance(value, relax.Call)
            and isinstance(value.op, tvm.ir.Op)
            and value.op.name == op
            and all(_is_const(a) and _tvm.constant_value(a).size == 1 for a in value.args[1:3])
        )
        return value if ok else None

    names = set()
    for layer in layers:
        dq = static_call(layer.data, "relax.dequantize")
        if dq is not None and static_call(dq.args[0], "relax.quantize") is not None:
            names.add(layer.name)
    return names


@dataclass(frozen=True)
class Join:
    """A residual add of two activations: `var = add(a, b)`, a, b and var 4-D fp32 alike."""

    name: str
    var: relax.Var
    call: relax.Call

    def describe(self) -> str:
        return f"residual add {list(_shape(self.var) or [])}"

    @property
    def tensors(self) -> tuple[relax.Expr, relax.Expr, relax.Var]:
        """What calibration observes: both operands and the result."""
        return self.call.args[0], self.call.args[1], self.var


def find_joins(func: relax.Function) -> list[Join]:
    """Residual adds of `func` in binding order (4-D NCHW activations: CNN blocks only)."""
    joins: list[Join] = []
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return joins
    consts: set = set()
    for block in body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                continue
            value = binding.value
            if _is_const(value):
                consts.add(binding.var)
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                continue
            if value.op.name != ADD or len(value.args) != 2:
                continue
            a, b = value.args
            if not all(isinstance(v, relax.Var) and v not in consts for v in (a, b)):
                continue
            shapes = [_shape(e) for e in (a, b, value)]
            if shapes[0] is None or len(shapes[0]) != 4 or len(set(shapes)) != 1:
                continue
            if all(_is_f32(e) for e in (a, b, value)):
                joins.append(Join(f"add_{len(joins)}", binding.var, value))
    return joins


def _shape(expr: relax.Expr) -> tuple[int | str, ...] | None:
    """Static dims, a symbolic one (a CNN's batch) by name."""
    return shape_dims(expr)


def bound_constants(func: relax.Function) -> dict:
    """Variables bound to constants (TVM's importer leaves some weights that way)."""
    out: dict = {}
    body = func.body
    for block in body.blocks if isinstance(body, relax.SeqExpr) else []:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding) and isinstance(b.value, tvm.ir.GenericConst):
                out[b.var] = b.value
    return out
