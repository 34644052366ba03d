"""Fold a zero pad of the spatial axes into the conv2d that reads it.

TF-exported models (EfficientNet-Lite0) pad asymmetrically with an explicit Pad, which the
ONNX importer emits as a `pad` TIR kernel in front of a conv2d with padding 0. As its own kernel
the pad is one more pass over the activation (each of EfficientNet-Lite0's 13 pads costs about
as much as a conv), and the conv then reads a pre-padded odd-width input. Folded into the conv's
own (asymmetric) padding, the conv kernel pads in cache and its schedule sees the real stride
pattern.

    before:  p = call_tir(pad, (x,))                      # [1,C,H,W] -> [1,C,H+1,W+1], zeros
             y = conv2d(p, w, strides=2, padding=[0, 0, 0, 0])
    after:   y = conv2d(x, w, strides=2, padding=[0, 0, 1, 1])   # top, left, bottom, right

Only kernels whose single block is `out[i..] = if_then_else(inside, x[i.. - before], 0.0)`
with the batch and channel axes unpadded fold; the pad stays for other readers. Counter:
`pads_folded`.
"""

from __future__ import annotations

import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_helpers import rewrite_relax_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.passes._pad_kernels import zero_pad_widths


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, pads: dict) -> None:
        super().__init__(mod)
        self.pads = pads  # pad kernel name -> widths
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        if str(call.attrs.data_layout) != "NCHW":
            return call
        data = call.args[0]
        producer = self.lookup_binding(data) if isinstance(data, relax.Var) else None
        if not (
            isinstance(producer, relax.Call)
            and isinstance(producer.op, tvm.ir.Op)
            and producer.op.name == "relax.call_tir"
            and producer.args[0].name_hint in self.pads
        ):
            return call
        widths = self.pads[producer.args[0].name_hint]
        if len(widths) != 4 or widths[0] != (0, 0) or widths[1] != (0, 0):
            return call
        (pt, pb), (pl, pr) = widths[2], widths[3]
        top, left, bottom, right = (int(p) for p in call.attrs.padding)
        attrs = call.attrs
        self.count += 1
        return relax.op.nn.conv2d(
            producer.args[1].fields[0],
            call.args[1],
            strides=[int(s) for s in attrs.strides],
            padding=[top + pt, left + pl, bottom + pb, right + pr],
            dilation=[int(d) for d in attrs.dilation],
            groups=int(attrs.groups),
            data_layout=str(attrs.data_layout),
            kernel_layout=str(attrs.kernel_layout),
            out_layout=str(attrs.out_layout),
            out_dtype=None if str(attrs.out_dtype) in ("", "None", "void") else attrs.out_dtype,
        )


@register_pass
class FoldPad(GraphPass):
    """Zero pads of H/W (importer `pad` kernels) folded into the padding of the conv2d after."""

    name = "fold-pad"

    def run(self, mod: tvm.IRModule) -> PassResult:
        pads = {}
        for gvar, func in mod.functions.items():
            widths = zero_pad_widths(func)
            if widths is not None:
                pads[gvar.name_hint] = widths
        if not pads:
            return PassResult(mod, False, {"pads_folded": 0})
        new, count = rewrite_relax_functions(mod, lambda m: _Fold(m, pads))
        if count:
            new = relax.transform.DeadCodeElimination()(new)
        changed = count > 0 and not _tvm.structural_equal(new, mod)
        return PassResult(new, changed, {"pads_folded": count})
