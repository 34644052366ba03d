"""Attention in bf16 on x86 CPUs with AVX512_BF16: each fused attention group becomes one
`vdpbf16ps` attention kernel (`targets/cpu/precision/attention.py`).

`fuse` (-O3) makes each attention one composite function (`graphopt.attention`). When the
model is compiled with `--precision bf16` (`lower-precision{attention=true}` marks the module)
and the target has AVX512_BF16, this pass replaces every such call whose body has the form
exporters write for multi-head attention,

    q_h = permute(reshape(q, [B, S, H, D]), [0, 2, 1, 3]) [* c]        (k_h, v_h alike)
    s   = matmul(q_h, permute(k, [0, 2, 3, 1]) [* c]) [* c | / c] [+ mask]
    p   = softmax(s, axis=-1) [-> where(isnan(p), c, p)]
    out = reshape(permute(matmul(p, v_h), [0, 2, 1, 3]), [B, S, H * D])

with constant scalar scales, a float mask broadcastable to [B, H, S, S], static shapes and D a
multiple of 16, by one `call_tir` of the kernel on (q, k, v, [mask]). Anything else, and every
attention on a target without the instruction, stays the fp32 group: the softmax and both
matmuls run fp32 there (the compile report's note says what the target computes with).

Counters: `attention_bf16` (groups replaced), `attention_fp32` (groups left: other forms),
`no_instruction` (1 when the module asked for bf16 attention and the target lacks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from graphopt.errors import PipelineError
from graphopt.pass_helpers import KernelCall, PlannedCalls, rewrite_planned
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_ops import ATTENTION_ATTR, has_dpbf16
from graphopt.targets.cpu.precision import attention as A
from graphopt.targets.cpu.precision.attention_form import read_attention
from graphopt.targets.cpu.precision.materialize import current_target

COMPOSITE = "graphopt.attention"
MODES = ("auto", "bf16", "off")


@register_pass
class PrecisionAttention(GraphPass):
    """Fused attention groups -> one bf16 `vdpbf16ps` kernel each (x86 AVX512_BF16)."""

    name = "precision-attention"

    @dataclass(frozen=True)
    class Options:
        # auto: where lower-precision{attention=true} marked the module; bf16: always; off.
        mode: str = "auto"

    def run(self, mod: tvm.IRModule) -> PassResult:
        mode = self.options.mode
        if mode not in MODES:
            raise PipelineError(f"precision-attention: mode must be one of {', '.join(MODES)}")
        wanted = mode == "bf16" or (mode == "auto" and _marked(mod))
        stats = {"attention_bf16": 0, "attention_fp32": 0, "no_instruction": 0}
        if not wanted:
            return PassResult(mod, False, stats)
        if not has_dpbf16(current_target()):
            return PassResult(mod, False, {**stats, "no_instruction": 1})

        def plans_of(graph) -> dict:
            plans = {}
            for var in graph.order:
                plan = _plan(graph.value[var], mod)
                if plan is not None:
                    plans[var] = plan
                elif _is_attention(graph.value[var], mod):
                    stats["attention_fp32"] += 1
            stats["attention_bf16"] += len(plans)
            return plans

        kernels: dict = {}
        new = rewrite_planned(
            mod,
            plans_of,
            lambda m, plans: PlannedCalls(m, plans, kernels, A.attention16_kernel, "attention16"),
        )
        return PassResult(new or mod, new is not None, stats)


def _marked(mod: tvm.IRModule) -> bool:
    attrs = mod.attrs
    return attrs is not None and str(attrs.get(ATTENTION_ATTR, "")) == "bf16"


def _callee(call, mod: tvm.IRModule) -> relax.Function | None:
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar)):
        return None
    func = mod.functions.get(call.op)
    return func if isinstance(func, relax.Function) else None


def _is_attention(call, mod: tvm.IRModule) -> bool:
    func = _callee(call, mod)
    return func is not None and str((func.attrs or {}).get("Composite", "")) == COMPOSITE


def _plan(call, mod: tvm.IRModule) -> KernelCall | None:
    """The kernel call replacing one call of an attention composite (None: other form)."""
    if not _is_attention(call, mod):
        return None
    func = _callee(call, mod)
    found = read_attention(func, dict(zip(func.params, call.args)))
    if found is None:
        return None
    spec, q, k, v, mask = found
    if not spec.supported:
        return None
    args = [q, k, v] + ([mask] if mask is not None else [])
    return KernelCall(spec, args, relax.TensorType(list(q.ty.shape.values), "float32"))
