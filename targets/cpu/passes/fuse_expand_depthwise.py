"""Run a 16-bit pointwise conv and the depthwise conv reading its output as one kernel, over
bands of rows (`targets/cpu/precision/expand_depthwise.py`), where the map between them is
larger than the target's L2 caches hold.

After `materialize-precision`, a `vdpbf16ps` matmul over pixels whose bf16 bit patterns only a
16-bit depthwise conv reads is replaced, with that conv, by the fused kernel: the same bits,
and the expanded map (MobileNetV2's and EfficientNet-Lite0's first expansion: 112x112x96,
2.4 MB) stays in the cores' caches a band at a time instead of going to memory and back.
Smaller maps already stay in L2 between the two kernels and are left as they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_depthwise import spec_of as depthwise_spec_of
from graphopt.precision_ops import spec_of
from graphopt.targets.cpu.precision.expand_depthwise import expand_depthwise_kernel, fusable
from graphopt.targets.cpu.schedules.common import cpu_info

CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@register_pass
class FuseExpandDepthwise(GraphPass):
    """A bf16 pointwise conv + the depthwise conv after it -> one kernel over bands of rows."""

    name = "fuse-expand-depthwise"

    @dataclass(frozen=True)
    class Options:
        # Fuse where the map between the two is larger than this many bytes; -1: the target's
        # L2 caches (cores x L2 a core).
        min_bytes: int = -1

    def run(self, mod: tvm.IRModule) -> PassResult:
        info = cpu_info(tvm.target.Target.current(allow_none=True))
        cache = (info.cores, info.l2_bytes) if info is not None else (1, 1 << 20)
        floor = self.options.min_bytes
        if floor < 0:
            floor = cache[0] * cache[1] if info is not None else 1 << 62
        funcs = {g: f for g, f in mod.functions.items() if isinstance(f, relax.Function)}
        pairs = {}
        for func in funcs.values():
            pairs.update(_pairs(mod, func, floor))
        if not pairs:
            return PassResult(mod, False, {"fused": 0})
        fuser = _Fuser(mod, pairs, cache)
        updated = {g: fuser.visit_expr(f) for g, f in funcs.items()}
        new = tvm.IRModule(dict(fuser.builder_.get().functions), attrs=mod.attrs)
        for gvar, func in updated.items():
            new[gvar] = func
        return PassResult(_without_unused(new, pairs), True, {"fused": len(pairs)})


def _without_unused(mod: tvm.IRModule, pairs: dict) -> tvm.IRModule:
    """`mod` without the kernels of the fused pairs that no call reads any more."""
    called = set()

    def visit(expr) -> None:
        if _call_tir(expr):
            called.add(expr.args[0])

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    fused = {call.args[0] for pair in pairs.values() for call in pair}
    return tvm.IRModule(
        {g: f for g, f in mod.functions.items() if g not in fused or g in called},
        attrs=mod.attrs,
    )


def _spec(mod, call):
    return spec_of(mod[call.args[0]])


def _dw_spec(mod, call):
    return depthwise_spec_of(mod[call.args[0]])


def _call_tir(value) -> bool:
    return isinstance(value, relax.Call) and value.op.same_as(CALL_TIR)


def _pairs(mod, func: relax.Function, floor: int) -> dict:
    """{matmul var: (matmul call, depthwise call)} of the pairs to fuse in `func`: the matmul's
    output read by that depthwise conv alone, the two fusable, the map above `floor` bytes."""
    if not isinstance(func.body, relax.SeqExpr):
        return {}
    bindings = [b for block in func.body.blocks for b in block.bindings]
    uses: Counter = Counter()  # bindings (and the function's result) that read each var
    for value in [b.value for b in bindings] + [func.body.body]:
        uses.update(relax.analysis.free_vars(value))
    producers = {b.var: b.value for b in bindings if _call_tir(b.value)}
    pairs = {}
    for b in bindings:
        if not _call_tir(b.value) or _dw_spec(mod, b.value) is None:
            continue
        x = b.value.args[1].fields[0]
        mm_call = producers.get(x)
        if mm_call is None or uses[x] != 1 or _spec(mod, mm_call) is None:
            continue
        mm, dw = _spec(mod, mm_call), _dw_spec(mod, b.value)
        if fusable(mm, dw) and 2 * dw.x_shape[1] * dw.x_shape[2] * mm.n > floor:
            pairs[x] = (mm_call, b.value)
    return pairs


@mutator
class _Fuser(PyExprMutator):
    """Drops the fused matmuls' bindings and calls the fused kernel in place of each
    depthwise conv."""

    def __init__(self, mod: tvm.IRModule, pairs: dict, cache: tuple[int, int]):
        super().__init__(mod)
        self.pairs = pairs
        self.fused = {}  # depthwise call -> (fused kernel, matmul call)
        for i, (mm_call, dw_call) in enumerate(pairs.values()):
            func = expand_depthwise_kernel(_spec(mod, mm_call), _dw_spec(mod, dw_call), *cache)
            gvar = self.builder_.add_func(func, f"expand_depthwise{i}")
            self.fused[dw_call] = (gvar, mm_call)

    def visit_var_binding_(self, binding) -> None:
        if binding.var not in self.pairs:  # a fused matmul runs inside the fused kernel
            super().visit_var_binding_(binding)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if call not in self.fused:
            return super().visit_call_(call)
        gvar, mm_call = self.fused[call]
        operands = [*mm_call.args[1].fields, *call.args[1].fields[1:]]
        operands = [self.visit_expr(o) for o in operands]
        return relax.call_tir(gvar, relax.Tuple(operands), call.ty)
