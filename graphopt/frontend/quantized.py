"""Quantized ONNX models: rewrite the operators TVM's importer lacks before it runs.

- QLinearConv / QLinearMatMul -> DequantizeLinear -> Conv / MatMul -> QuantizeLinear, i.e. the
  QDQ form the `quantize` pass emits (the bias, int32 at scale x_scale * w_scale, becomes fp32).
  onnxruntime requantizes its exact int32 accumulator; we accumulate dequantized values in fp32,
  so an output can differ by one quantization step where the exact value sits on a rounding tie.
- ConvInteger / MatMulInteger -> the same Conv / MatMul in float64 on (x - x_zp), (w - w_zp),
  cast to int32: exact, since every partial sum of int8 x int8 products stays far below 2^53.
  (TVM's own MatMulInteger converter is replaced too: one exact path for both.)
- onnxruntime's com.microsoft QLinear* element-wise and pooling ops (QLinearAdd, QLinearMul,
  QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid, QLinearLeakyRelu, QLinearConcat;
  its QOperator format writes them) -> DequantizeLinear -> the float op -> QuantizeLinear.
- DequantizeLinear of an int32 initializer (the bias in onnxruntime's QDQ models; Relax cannot
  dequantize int32) becomes the fp32 initializer it denotes, computed exactly as ONNX defines it.
QuantizeLinear / DequantizeLinear themselves are imported by TVM as R.quantize / R.dequantize.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedOperatorError

REWRITTEN = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
MS_DOMAIN = "com.microsoft"


class _Graph:
    """Initializer lookup and fresh names while rewriting one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.const_nodes = {
            n.output[0]: n for n in self.graph.node if n.op_type == "Constant" and n.attribute
        }
        self.used = {v for n in self.graph.node for v in (*n.input, *n.output)}
        self.used |= set(self.inits)
        self.new_inits: list[onnx.TensorProto] = []
        self.count = 0

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.const_nodes.get(name)
        if node is not None and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def fresh(self, base: str) -> str:
        while True:
            self.count += 1
            name = f"{base}__gq{self.count}"
            if name not in self.used:
                self.used.add(name)
                return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.new_inits.append(numpy_helper.from_array(array, name))
        return name


def has_quantized_ops(model: onnx.ModelProto) -> bool:
    return any(
        n.op_type in REWRITTEN or n.op_type == "DequantizeLinear" or n.domain == MS_DOMAIN
        for n in model.graph.node
    )


def rewrite_quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with the operators above rewritten (unchanged if there are none)."""
    if not has_quantized_ops(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        rule = (_MS_RULES if node.domain == MS_DOMAIN else _RULES).get(node.op_type)
        if node.domain not in ("", "ai.onnx", MS_DOMAIN) or rule is None:
            nodes.append(node)
            continue
        nodes.extend(rule(g, node))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(g.new_inits)
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _opt(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i and node.input[i] else ""


def _dq(g: _Graph, x: str, scale: str, zp: str, axis: int | None = None) -> tuple:
    out = g.fresh(x + "_dq")
    kwargs = {"axis": axis} if axis is not None else {}
    node = helper.make_node(
        "DequantizeLinear", [x, scale, zp] if zp else [x, scale], [out], **kwargs
    )
    return node, out


def _weight_axis(g: _Graph, w: str, scale: str, axis: int) -> int | None:
    s = g.value(scale)
    return axis if s is not None and s.size > 1 else None


def _bias_fp32(g: _Graph, node, bias: str, x_scale: str, w_scale: str) -> tuple[list, str]:
    """int32 bias at scale x_scale * w_scale -> fp32 (an initializer when all are constant)."""
    b, xs, ws = g.value(bias), g.value(x_scale), g.value(w_scale)
    if b is not None and xs is not None and ws is not None:
        scale = (xs.astype(np.float32) * ws.astype(np.float32)).reshape(-1)
        return [], g.const(bias + "_fp32", (b.astype(np.float32) * scale).astype(np.float32))
    cast, prod, out = g.fresh(bias + "_f"), g.fresh(bias + "_s"), g.fresh(bias + "_fp32")
    return [
        helper.make_node("Cast", [bias], [cast], to=TensorProto.FLOAT),
        helper.make_node("Mul", [x_scale, w_scale], [prod]),
        helper.make_node("Mul", [cast, prod], [out]),
    ], out


def _qlinear_conv(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, xs, xz, w, ws, wz, ys, yz = (_opt(node, i) for i in range(8))
    bias = _opt(node, 8)
    dq_x, xf = _dq(g, x, xs, xz)
    dq_w, wf = _dq(g, w, ws, wz, _weight_axis(g, w, ws, 0))
    nodes = [dq_x, dq_w]
    inputs = [xf, wf]
    if bias:
        extra, bf = _bias_fp32(g, node, bias, xs, ws)
        nodes += extra
        inputs.append(bf)
    y = g.fresh(node.output[0] + "_fp32")
    nodes.append(helper.make_node("Conv", inputs, [y], name=node.name, **_attrs(node)))
    nodes.append(helper.make_node("QuantizeLinear", [y, ys, yz], [node.output[0]]))
    return nodes


def _qlinear_matmul(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    a, a_s, az, b, b_s, bz, ys, yz = (_opt(node, i) for i in range(8))
    a_scale = g.value(a_s)
    if a_scale is not None and a_scale.size > 1:
        raise UnsupportedOperatorError(
            f"QLinearMatMul [{node.name}]: per-row scales of the first input are not supported"
        )
    dq_a, af = _dq(g, a, a_s, az)
    bv = g.value(b)
    axis = _weight_axis(g, b, b_s, bv.ndim - 1 if bv is not None else 1)
    dq_b, bf = _dq(g, b, b_s, bz, axis)
    y = g.fresh(node.output[0] + "_fp32")
    return [
        dq_a,
        dq_b,
        helper.make_node("MatMul", [af, bf], [y], name=node.name),
        helper.make_node("QuantizeLinear", [y, ys, yz], [node.output[0]]),
    ]


def _centered_double(g: _Graph, x: str, zp: str, zp_shape: tuple | None) -> list:
    """(double(x) - double(zp)) with zp reshaped to broadcast per channel when needed."""
    xd = g.fresh(x + "_f64")
    nodes = [helper.make_node("Cast", [x], [xd], to=TensorProto.DOUBLE)]
    if not zp:
        return nodes, xd
    z = g.value(zp)
    if z is not None:
        zd = g.const(zp + "_f64", z.astype(np.float64).reshape(zp_shape if z.size > 1 else ()))
    else:
        zd = g.fresh(zp + "_f64")
        nodes.append(helper.make_node("Cast", [zp], [zd], to=TensorProto.DOUBLE))
    out = g.fresh(x + "_centered")
    nodes.append(helper.make_node("Sub", [xd, zd], [out]))
    return nodes, out


def _conv_integer(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, w, xz, wz = (_opt(node, i) for i in range(4))
    nx, xc = _centered_double(g, x, xz, None)
    nw, wc = _centered_double(g, w, wz, (-1, 1, 1, 1))
    y = g.fresh(node.output[0] + "_f64")
    return [
        *nx,
        *nw,
        helper.make_node("Conv", [xc, wc], [y], name=node.name, **_attrs(node)),
        helper.make_node("Cast", [y], [node.output[0]], to=TensorProto.INT32),
    ]


def _matmul_integer(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    a, b, az, bz = (_opt(node, i) for i in range(4))
    if az and (v := g.value(az)) is not None and v.size > 1:
        raise UnsupportedOperatorError(
            f"MatMulInteger [{node.name}]: per-row zero points of the first input are not supported"
        )
    na, ac = _centered_double(g, a, az, None)
    nb, bc = _centered_double(g, b, bz, (-1,))  # per-column zero points broadcast on the last axis
    y = g.fresh(node.output[0] + "_f64")
    return [
        *na,
        *nb,
        helper.make_node("MatMul", [ac, bc], [y], name=node.name),
        helper.make_node("Cast", [y], [node.output[0]], to=TensorProto.INT32),
    ]


def _dequantize_int32(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, scale, zp = (_opt(node, i) for i in range(3))
    xv, sv = g.value(x), g.value(scale)
    zv = g.value(zp) if zp else np.zeros((), np.int32)
    if xv is None or xv.dtype != np.int32 or sv is None or zv is None:
        return [node]
    axis = _attrs(node).get("axis", 1)
    shape = [1] * xv.ndim
    if sv.size > 1:
        shape[axis % xv.ndim] = -1
    value = xv.astype(np.int64) - zv.astype(np.int64).reshape(shape if zv.size > 1 else ())
    value = value.astype(np.float32) * sv.astype(np.float32).reshape(shape if sv.size > 1 else ())
    return [
        helper.make_node(
            "Constant",
            [],
            [node.output[0]],
            value=numpy_helper.from_array(value.astype(np.float32), node.output[0] + "_value"),
        )
    ]


def _ms_qlinear(float_op: str, operands: list[int], out_q: int, concat: bool = False):
    """Rule for a com.microsoft QLinear op: operand i is (input[i], input[i+1], input[i+2]);
    inputs[out_q], inputs[out_q + 1] are the output scale and zero point."""

    def rule(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        attrs = _attrs(node)
        if attrs.pop("channels_last", 0):
            return [node]  # NHWC variants stay unsupported (named by the support check)
        idx = list(range(2, len(node.input), 3)) if concat else operands
        nodes, floats = [], []
        for i in idx:
            dq, f = _dq(g, node.input[i], node.input[i + 1], _opt(node, i + 2))
            nodes.append(dq)
            floats.append(f)
        y = g.fresh(node.output[0] + "_fp32")
        nodes.append(helper.make_node(float_op, floats, [y], name=node.name, **attrs))
        ys, yz = node.input[out_q], _opt(node, out_q + 1)
        nodes.append(
            helper.make_node("QuantizeLinear", [y, ys, yz] if yz else [y, ys], [node.output[0]])
        )
        return nodes

    return rule


_MS_RULES = {
    "QLinearAdd": _ms_qlinear("Add", [0, 3], 6),
    "QLinearMul": _ms_qlinear("Mul", [0, 3], 6),
    "QLinearGlobalAveragePool": _ms_qlinear("GlobalAveragePool", [0], 3),
    "QLinearAveragePool": _ms_qlinear("AveragePool", [0], 3),
    "QLinearSigmoid": _ms_qlinear("Sigmoid", [0], 3),
    "QLinearLeakyRelu": _ms_qlinear("LeakyRelu", [0], 3),
    "QLinearConcat": _ms_qlinear("Concat", [], 0, concat=True),
}

_RULES = {
    "QLinearConv": _qlinear_conv,
    "QLinearMatMul": _qlinear_matmul,
    "ConvInteger": _conv_integer,
    "MatMulInteger": _matmul_integer,
    "DequantizeLinear": _dequantize_int32,
}
