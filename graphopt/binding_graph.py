"""Walking one Relax function's bindings: users, resolution through vars, epilogue chains.

`BindingGraph` indexes a function's bindings and use counts; `epilogue_chain` follows what
comes after a conv2d / matmul through single-use bindings (bias add, relu / clip / max / min
clamps, a final quantize). The QDQ matchers (`lower-int8`) and the quantization tools
(`graphopt.compress`) share them.
"""

from __future__ import annotations

import math
import re

import numpy as np
import tvm
from tvm import relax

from graphopt import _tvm


def op_name(expr) -> str:
    """The Relax operator's name of a call ("" for anything else)."""
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def const_value(expr) -> np.ndarray | None:
    """A constant's value, else None."""
    return _tvm.constant_value(expr) if isinstance(expr, tvm.ir.GenericConst) else None


def static_dims(expr) -> tuple[int, ...] | None:
    """An expression's static shape, else None."""
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return tuple(int(v) for v in values)


def shape_dims(expr) -> tuple[int | str, ...] | None:
    """An expression's shape with its symbolic dims by name (`("1", "seq", 384)` is `(1,
    "seq", 384)`); a dim that is an expression of symbols (a strided conv's output height)
    gets a name derived from the expression, the same for the same expression. None when
    the shape is unknown."""
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None:
        return None
    dims: list[int | str] = []
    for v in values:
        if not isinstance(v, (tvm.tirx.IntImm, tvm.tirx.Var)):  # one form per value
            v = tvm.sym.Analyzer().simplify(v)
        if isinstance(v, tvm.tirx.IntImm):
            dims.append(int(v))
        elif isinstance(v, tvm.tirx.Var):
            dims.append(str(v.name))
        else:
            text = re.sub(r"T\.int(?:32|64)\((-?\d+)\)", r"\1", str(v))
            dims.append("_" + re.sub(r"\W+", "_", text).strip("_"))
    return tuple(dims)


class BindingGraph:
    """Bindings and use counts of one function (what the matchers walk)."""

    def __init__(self, func: relax.Function, mod: tvm.IRModule) -> None:
        self.mod = mod
        self.value: dict = {}
        self.users: dict = {}
        self.order: list = []
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.value[binding.var] = binding.value
                    self.order.append(binding.var)
                    self._use(binding.value, binding.var)
        self._use(func.body.body, None)

    def _use(self, expr, user) -> None:
        if isinstance(expr, relax.Var):
            self.users.setdefault(expr, []).append(user)
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                self._use(arg, user)
        elif isinstance(expr, relax.Tuple):
            for field in expr.fields:
                self._use(field, user)
        elif isinstance(expr, relax.TupleGetItem):
            self._use(expr.tuple_value, user)

    def resolve(self, expr):
        """The call or constant behind an expression (through var bindings)."""
        while isinstance(expr, relax.Var) and expr in self.value:
            expr = self.value[expr]
        return expr

    def only_user(self, var) -> relax.Var | None:
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 and users[0] is not None else None


def epilogue_chain(graph: BindingGraph, var, kind: str, channels: int, is_dynamic: bool):
    """Follow bias add, relu / clip and a final quantize through single-use bindings.

    Returns (tail, bias, lo, hi, requant): the last binding taken, the bias as one fp32 value
    per channel (or None), the clamp bounds and (scale, zero point, dtype) of the quantize.
    """
    tail, bias, lo, hi, requant = var, None, -math.inf, math.inf, None
    nxt = graph.only_user(tail)
    if nxt is not None and op_name(graph.value[nxt]) == "relax.add":
        add = graph.value[nxt]
        other = add.args[1] if add.args[0].same_as(tail) else add.args[0]
        b = const_value(graph.resolve(other))
        shape = shape_dims(add)
        b = _channel_vector(b, kind, channels, len(shape or ()))
        if b is not None and shape is not None and shape == shape_dims(graph.value[var]):
            tail, bias = nxt, b
            nxt = graph.only_user(tail)
    tail, lo, hi, nxt = clamp_chain(graph, tail, nxt, lo, hi)
    if nxt is not None and not is_dynamic and op_name(graph.value[nxt]) == "relax.quantize":
        requant = static_quantize(graph, graph.value[nxt])
        if requant is not None:
            tail = nxt
    return tail, bias, lo, hi, requant


def static_quantize(graph: BindingGraph, quant) -> tuple[float, int, str] | None:
    """(scale, zero point, dtype) of a quantize to int8 / uint8 with constant scalars."""
    s_o, zp_o = const_value(graph.resolve(quant.args[1])), const_value(graph.resolve(quant.args[2]))
    out_dtype = str(quant.attrs.out_dtype)
    if s_o is None or zp_o is None or s_o.size != 1 or zp_o.size != 1:
        return None
    if out_dtype not in ("int8", "uint8") or float(s_o.reshape(())) <= 0:
        return None
    return float(s_o.reshape(())), int(zp_o.reshape(())), out_dtype


def clamp_chain(graph: BindingGraph, tail, nxt, lo: float, hi: float):
    """Follow relu / clip / max / min users of `tail` while their bounds still intersect
    [lo, hi]; returns the last clamp, the bounds and its only user (or None)."""
    while nxt is not None:
        bound = _clamp(graph, nxt, tail)
        if bound is None or max(lo, bound[0]) > min(hi, bound[1]):
            break
        tail, lo, hi = nxt, max(lo, bound[0]), min(hi, bound[1])
        nxt = graph.only_user(tail)
    return tail, lo, hi, nxt


def _clamp(graph: BindingGraph, var, data) -> tuple[float, float] | None:
    """(lo, hi) when `var` clamps `data` by constants: relu, clip, maximum / minimum with a
    scalar (as a Relax op, or a call_tir of a one-block max / min kernel: how the ONNX importer
    brings in Clip)."""
    call = graph.value[var]
    op = op_name(call)
    if op == "relax.nn.relu" and call.args[0].same_as(data):
        return 0.0, math.inf
    if op == "relax.clip" and call.args[0].same_as(data):
        lo, hi = _prim_float(call.args[1]), _prim_float(call.args[2])
        return None if lo is None or hi is None else (lo, hi)
    if op in ("relax.maximum", "relax.minimum"):
        kind, args = op[len("relax.") : len("relax.") + 3], list(call.args)
    elif op == "relax.call_tir" and isinstance(call.args[1], relax.Tuple):
        # symbolic sizes the kernel cannot read off its buffers come as trailing scalars
        fields = [f for f in call.args[1].fields if not isinstance(f.ty, tvm.ir.PrimType)]
        kind, args = minmax_kernel(graph.mod[call.args[0]]), fields
    else:
        return None
    if kind is None or len(args) != 2 or not args[0].same_as(data):
        return None
    c = const_value(graph.resolve(args[1]))
    if c is None or c.size != 1:
        return None
    c = float(c.reshape(()))
    return (c, math.inf) if kind == "max" else (-math.inf, c)


def minmax_kernel(func) -> str | None:
    """'max' / 'min' when a PrimFunc is out[i..] = max|min(a[i..], b[]) in a single block."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    params = [p for p in func.params if not isinstance(p.ty, tvm.ir.PrimType)]  # buffers
    if len(params) != 3:
        return None
    try:
        sch = tvm.s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - any other shape of function is simply not a match
        return None
    if len(blocks) != 1:
        return None
    store = sch.get(blocks[0]).body
    if not isinstance(store, tvm.tirx.BufferStore):
        return None
    value = store.value
    kind = "max" if isinstance(value, tvm.tirx.Max) else "min"
    if not isinstance(value, (tvm.tirx.Max, tvm.tirx.Min)):
        return None
    a, b = params[:2]  # 0.27: a load's source is the parameter itself
    first, second = value.a, value.b
    loads = all(isinstance(e, tvm.ir.TensorLoad) for e in (first, second))
    if not loads or not first.source.same_as(a) or not second.source.same_as(b):
        return None
    same_index = len(first.indices) == len(store.indices) and all(
        i.same_as(j) for i, j in zip(first.indices, store.indices)
    )
    return kind if same_index and len(second.indices) == 0 else None


def _prim_float(expr) -> float | None:
    """A clip bound: an immediate (possibly wrapped in a PrimValue) or a scalar constant."""
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)):
        return float(value)
    if value is not None and isinstance(getattr(value, "value", None), (int, float)):
        return float(value.value)
    const = const_value(expr)
    return float(const.reshape(())) if const is not None and const.size == 1 else None


def _channel_vector(b, kind: str, channels: int, ndim: int) -> np.ndarray | None:
    """A bias constant as one value per output channel, or None if it varies otherwise."""
    if b is None or b.ndim > ndim or b.dtype != np.float32:
        return None
    shape = (1,) * (ndim - b.ndim) + b.shape
    axis = 1 if kind == "conv2d" else ndim - 1
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(b.reshape(-1), (channels,)).astype(np.float32)


def other_operand(call, var):
    """The operand of a binary call that is not `var` (None when neither or both are)."""
    a, b = call.args[0], call.args[1]
    if a.same_as(var) != b.same_as(var):
        return b if a.same_as(var) else a
    return None


def residual_add(graph: BindingGraph, tail):
    """(add var, other operand) when the only user of `tail` adds a tensor of its shape."""
    add = graph.only_user(tail)
    if add is None or op_name(graph.value[add]) != "relax.add":
        return None
    other = other_operand(graph.value[add], tail)
    if other is None or const_value(graph.resolve(other)) is not None:
        return None
    ty = getattr(other, "ty", None)
    if str(getattr(ty, "dtype", "")) != "float32":
        return None
    same = shape_dims(other) == shape_dims(graph.value[add]) == shape_dims(tail)
    return (add, other) if same and shape_dims(other) is not None else None


def _scalar(graph: BindingGraph, expr) -> float | None:
    c = const_value(graph.resolve(expr))
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def gelu_tail(graph: BindingGraph, h):
    """The var that ends a GELU of `h` (relax.nn.gelu, or h * (erf(h / sqrt 2) + 1) * 0.5)."""
    users = graph.users.get(h, [])
    if len(users) == 1 and users[0] is not None:
        return users[0] if op_name(graph.value[users[0]]) == "relax.nn.gelu" else None
    if len(users) != 2 or any(u is None for u in users):
        return None
    by_op = {op_name(graph.value[u]): u for u in users}
    div, mul = by_op.get("relax.divide"), by_op.get("relax.multiply")
    if div is None or mul is None:
        return None
    if _scalar(graph, other_operand(graph.value[div], h)) not in _near(2**0.5):
        return None
    erf = graph.only_user(div)
    one = graph.only_user(erf) if erf is not None else None
    if erf is None or op_name(graph.value[erf]) != "relax.erf" or one is None:
        return None
    if op_name(graph.value[one]) != "relax.add":
        return None
    if _scalar(graph, other_operand(graph.value[one], erf)) != 1.0:
        return None
    user = graph.only_user(one)
    if user is None or not user.same_as(mul) or not other_operand(graph.value[mul], one).same_as(h):
        return None
    half = graph.only_user(mul)
    if half is None or op_name(graph.value[half]) != "relax.multiply":
        return None
    return half if _scalar(graph, other_operand(graph.value[half], mul)) == 0.5 else None


def _near(value: float) -> set[float]:
    """The fp32 spellings of a constant an exporter may write."""
    return {float(np.float32(value)), value}
