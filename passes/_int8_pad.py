"""Part of `lower-int8`: a zero pad in front of a quantized conv becomes the conv's own padding.

TF-exported models (EfficientNet-Lite0) pad asymmetrically with an explicit Pad (an importer
`pad` TIR kernel); `quantize` puts the conv's QDQ after it:

    before:  p = call_tir(pad, (y,))   q = quantize(p, s, zp)   conv2d(dequantize(q), w, pad=P)
    after:                             q = quantize(y, s, zp)   conv2d(dequantize(q), w, pad=P+pad)

`fold-pad` does this for fp32 convs, but here the QDQ pair hides the conv from it. Left alone,
the layer before cannot requantize into the conv's input (its only user is the fp32 pad): it
dequantizes, and an unscheduled pad+quantize kernel runs in fp32 (half of EfficientNet-Lite0's
int8 time). Exact, also as fake quantization: quantize(0) = zp and dequantize(zp) = 0, the value
the conv pads with.
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.passes._pad_kernels import zero_pad_widths


def _op(expr) -> str:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def _scalar(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst) and _tvm.constant_value(expr).size == 1


def fold_pads(mod: tvm.IRModule, func: relax.Function, graph) -> tuple[relax.Function, int]:
    """`func` with the pads before quantized NCHW conv2ds folded; returns (func, count)."""
    requant: dict = {}  # quantize var -> the pad's input
    convs: dict = {}  # conv2d var -> (top, left, bottom, right) to add
    for qvar in graph.order:
        q = graph.value[qvar]
        if _op(q) != "relax.quantize" or not (_scalar(q.args[1]) and _scalar(q.args[2])):
            continue
        pad = graph.value.get(q.args[0])
        if _op(pad) != "relax.call_tir" or graph.only_user(q.args[0]) is None:
            continue
        widths = zero_pad_widths(mod[pad.args[0]])
        if widths is None or len(widths) != 4 or widths[0] != (0, 0) or widths[1] != (0, 0):
            continue
        found = _conv_users(graph, qvar)
        if found is None:
            continue
        (pt, pb), (pl, pr) = widths[2], widths[3]
        requant[qvar] = pad.args[1].fields[0]
        convs.update({c: (pt, pl, pb, pr) for c in found})
    if not requant:
        return func, 0
    pads = {graph.value[q].args[0] for q in requant}
    return _Fold(mod, requant, convs, pads).visit_expr(func), len(requant)


def _conv_users(graph, qvar) -> list | None:
    """The NCHW conv2ds that read q (through dequantizes, as data); None if q has other uses."""
    convs = []
    for deq in graph.users.get(qvar, []):
        value = graph.value.get(deq)
        if _op(value) != "relax.dequantize" or not value.args[0].same_as(qvar):
            return None
        for conv in graph.users.get(deq, []):
            call = graph.value.get(conv)
            if _op(call) != "relax.nn.conv2d" or not call.args[0].same_as(deq):
                return None
            if call.args[1].same_as(deq) or str(call.attrs.data_layout) != "NCHW":
                return None
            convs.append(conv)
    return convs or None


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, requant: dict, convs: dict, pads: set) -> None:
        super().__init__(mod)
        self.requant, self.convs, self.pads = requant, convs, pads

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if binding.var in self.pads:
            return  # its only reader now quantizes the pad's input (lower-int8 walks no dead code)
        if binding.var in self.requant:
            data = self.visit_expr(self.requant[binding.var])
            args = [data, *(self.visit_expr(a) for a in value.args[1:])]
            new = relax.Call(value.op, args, value.attrs)
        elif binding.var in self.convs:
            a = value.attrs
            pads = [int(p) + d for p, d in zip(a.padding, self.convs[binding.var])]
            out_dtype = None if str(a.out_dtype) in ("", "None", "void") else a.out_dtype
            new = relax.op.nn.conv2d(
                self.visit_expr(value.args[0]),
                self.visit_expr(value.args[1]),
                strides=[int(s) for s in a.strides],
                padding=pads,
                dilation=[int(d) for d in a.dilation],
                groups=int(a.groups),
                data_layout=str(a.data_layout),
                kernel_layout=str(a.kernel_layout),
                out_layout=str(a.out_layout),
                out_dtype=out_dtype,
            )
        else:
            super().visit_var_binding_(binding)
            return
        var = self.builder_.emit(new, str(binding.var.name))
        self.set_var_remap(binding.var, var)
