"""Hand 16-bit activations to 16-bit matmuls: the producer stores r(x), the matmul reads it.

Before:  a = clip(add(conv2d(..), b), 0, 6)             # fp32, 4 bytes a value
         y = call_tir(matmul16, (a, W, ..))            # rounds a to bf16 on every call
After:   a = clip(add(conv2d(..), b), 0, 6)
         h = call_tir(bits16, (a,))                    # uint16 bit patterns of r(a)
         y = call_tir(matmul16{x_bits}, (h, W, ..))    # widens (or reads bf16 words as they are)

A 16-bit matmul (`graphopt.precision_ops`) computes with r(x), x rounded to its format (round
to nearest even). When every consumer of x is such a matmul of one precision, x itself is
never needed: storing r(x) as 16-bit bit patterns gives the same numbers (the same rounding,
applied once either way), halves the bytes the producer writes and the matmul reads, and the
matmul skips its rounding pass (the `vdpbf16ps` kernel reads an even-K row of bf16 bits as
its pair words in place). The rounding is an ordinary elementwise kernel, so `tvm.FuseOps`
fuses it into the producer's kernel (a depthwise conv + bias + ReLU6 in MobileNetV2 and
EfficientNet-Lite0), which then stores uint16.

A 16-bit matmul feeding only 16-bit matmuls of its precision (MobileNetV2's first projection,
112x112x16, read only by the next expansion) stores the bits itself: its kernel rounds each
result after its epilogue (`PrecisionMatmulSpec.out_bits`).

The 16-bit depthwise convs (`graphopt.precision_depthwise`, x86) are such readers and writers
too: with them MobileNetV2's expansion matmuls store their 112x112x96 .. 7x7x960 outputs as
16 bits for the depthwise conv after them, which stores its own for the projection after it.

Taken: a binding of a Relax operator, or of a portable 16-bit kernel, whose fp32 value is used
only as the input x of portable 16-bit kernels of one precision (never as a matmul's
residual, never by anything else); other opaque kernels (call_tir) keep fp32. Runs in the
CPU legalize stage after `fuse-precision-epilogue` and before `tvm.LegalizeOps`.
Counters: `producers` (Relax ops whose value is stored as 16-bit), `matmul_producers` (16-bit
kernels storing their output as 16-bit), `matmuls` (16-bit kernels reading bit patterns).
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm import relax, te

from graphopt.binding_graph import BindingGraph, op_name, shape_dims
from graphopt.pass_helpers import KernelCall, rewrite_planned
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_kernels import kernel_name, portable_for, spec_of16
from graphopt.precision_ops import bits_kernel, tir_bits


@register_pass
class PrecisionHandoff(GraphPass):
    """Activations read only by 16-bit matmuls stored as 16-bit bit patterns by their producer."""

    name = "precision-handoff"

    def run(self, mod: tvm.IRModule) -> PassResult:
        stats = {"producers": 0, "matmul_producers": 0, "matmuls": 0}
        canonical = relax.transform.CanonicalizeBindings()(mod)  # no var-to-var aliases
        kernels: dict = {}
        new = rewrite_planned(
            canonical,
            lambda graph: _plans(graph, stats),
            lambda module, plans: _Handoff(module, plans, kernels),
        )
        return PassResult(mod, False, stats) if new is None else PassResult(new, True, stats)


def _kernel_spec(graph: BindingGraph, call, reading: bool = True):
    """The spec of a call_tir of a portable 16-bit matmul or depthwise conv writing fp32 and
    (`reading`) reading fp32, else None. (A window conv's matmul reads its gathered windows
    as bits from the start: it can store bits, not read them from its producer.)"""
    if op_name(call) != "relax.call_tir" or not isinstance(call.args[0], tvm.ir.GlobalVar):
        return None
    spec = spec_of16(graph.mod[call.args[0]])
    if spec is None or spec.layout != "natural" or spec.out_bits or reading and spec.x_bits:
        return None
    return spec


def _handed(graph: BindingGraph, var) -> dict | None:
    """{matmul var: its spec} when every use of `var` is the x of a 16-bit matmul of one
    precision, else None."""
    users = graph.users.get(var, [])
    specs = {}
    for user in users:
        call = graph.value.get(user) if user is not None else None
        spec = _kernel_spec(graph, call) if call is not None else None
        if spec is None or user in specs:  # another consumer, or x used twice by one call
            return None
        fields = list(call.args[1].fields)
        if not fields[0].same_as(var) or any(f.same_as(var) for f in fields[1:]):
            return None
        specs[user] = spec
    if not specs or len({s.precision for s in specs.values()}) != 1:
        return None
    return specs


def _plans(graph: BindingGraph, stats: dict) -> dict:
    """Producer var -> its precision (a Relax op: a rounding kernel follows it), or ->
    KernelCall (a 16-bit matmul: reads and / or writes bit patterns), in binding order."""
    plans: dict = {}
    for var in graph.order:
        value = graph.value[var]
        if op_name(value) == "" or str(getattr(var.ty, "dtype", "")) != "float32":
            continue
        specs = _handed(graph, var) if shape_dims(var) is not None else None
        if specs is None:
            continue
        precision = next(iter(specs.values())).precision
        if op_name(value) == "relax.call_tir":
            own = _kernel_spec(graph, value, reading=False)
            if own is None or own.precision != precision:
                continue
            plan = plans.get(var) or KernelCall(own, list(value.args[1].fields), value.ty)
            out_ty = relax.TensorType(var.ty.shape, "uint16")
            plans[var] = KernelCall(
                dataclasses.replace(plan.spec, out_bits=True), plan.args, out_ty
            )
            stats["matmul_producers"] += 1
        else:
            plans[var] = precision
            stats["producers"] += 1
        for user, spec in specs.items():
            call = graph.value[user]
            args = list(call.args[1].fields)
            plans[user] = KernelCall(dataclasses.replace(spec, x_bits=True), args, call.ty)
        stats["matmuls"] += len(specs)
    return plans


@relax.expr_functor.mutator
class _Handoff(relax.PyExprMutator):
    """Emits each producer, then its bits (`bits_kernel`); each planned matmul reads those."""

    def __init__(self, mod: tvm.IRModule, plans: dict, kernels: dict) -> None:
        super().__init__(mod)
        self.plans, self.kernels = plans, kernels
        self.bits: dict = {}  # producer var -> the var of its bit patterns

    def _kernel(self, key: str, make) -> tvm.ir.GlobalVar:
        if key not in self.kernels:
            func, name = make()
            self.kernels[key] = self.builder_.add_func(func, name)
        return self.kernels[key]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = self.plans.get(binding.var)
        if plan is None or isinstance(plan, str):
            super().visit_var_binding_(binding)
            if plan is not None:  # a producer: its bits follow it
                self.bits[binding.var] = self._emit_bits(binding.var, plan)
        else:  # a matmul: the same layer reading and / or writing bit patterns
            gvar = self._kernel(
                plan.spec.text(), lambda: (portable_for(plan.spec), kernel_name(plan.spec))
            )
            x, *rest = plan.args
            x = self.bits[x] if x in self.bits else self.visit_expr(x)  # handed, or as it was
            args = relax.Tuple([x, *(self.visit_expr(a) for a in rest)])
            call = self.builder_.normalize(relax.call_tir(gvar, args, plan.out_ty))
            if plan.spec.out_bits:  # a new var: its type changed, and only matmuls read it
                self.bits[binding.var] = self.builder_.emit(call)
            else:
                self.builder_.emit_normalized(relax.VarBinding(binding.var, call))

    def _emit_bits(self, var, precision: str) -> relax.Var:
        shape = shape_dims(var)
        if not all(isinstance(d, int) for d in shape):
            # a kernel over the var's own shape expressions (s, (s - 1) // 32 + 1, ..), with
            # their vars passed in: FuseOps puts it in the producer's group, whose other
            # kernels see the same expressions (one size var per dim would not match them)
            return self.builder_.emit_te(
                lambda x: te.compute(x.shape, lambda *i: tir_bits(x(*i), precision), "bits16"),
                self.visit_expr(var),
                primfunc_name_hint="bits16",
            )
        key = f"bits16/{precision}/{shape}"
        gvar = self._kernel(key, lambda: (bits_kernel(shape, precision), "bits16"))
        out = relax.TensorType(var.ty.shape, "uint16")
        return self.builder_.emit(relax.call_tir(gvar, (self.visit_expr(var),), out))
