"""Fuse operator patterns that TVM's generic FuseOps leaves as several kernels into one each.

Before:  s = R.matmul(q, k); s2 = R.divide(s, c); p = R.nn.softmax(R.add(s2, mask))
         o = R.matmul(p, v)
After:   o = cls.fused_relax_matmul_relax_divide_..._relax_matmul(q, k, c, mask, v)
         where the callee is a Relax function with {"Composite": "graphopt.attention",
         "Primitive": True}: the target's LegalizeOps, FuseOps and FuseTIR turn it into one kernel.

Families, each switchable by an option:
  conv_act         conv2d (+ bias) + relu / relu6 (clip 0..6) / sigmoid / SiLU / hard-swish / ...
  matmul_gelu      matmul (+ bias) + GELU, erf or tanh form
  matmul_bias      matmul + bias (+ single-op activation such as relu)
  layer_norm       mean/sub/pow/mean/add eps/sqrt/div (* gamma + beta) -> R.nn.layer_norm
  attention        matmul(Q, K^T) [scale] [+ mask] -> softmax -> matmul(., V), with the head
                   transposes that feed it (`attention_max_keys`: rows of at most so many keys)
  parallel_matmul  matmuls sharing an input (Q/K/V) -> one matmul on concatenated weights + split
                   (TVM's CombineParallelMatmul; run fold-constants afterwards to fold the concat)
Conv and matmul groups also take one following elementwise op (a residual add, a gate multiply)
that FuseOps would have fused. A conv or matmul group whose intermediate values are also used
elsewhere is not fused; an attention group returns such values (the attention probabilities of
models that output them) as extra outputs. Runs before the target's legalize stage.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.passes import _fusion_patterns as fp
from graphopt.passes._shape_params import inline_shape_params

FAMILIES = ("conv_act", "matmul_gelu", "matmul_bias", "layer_norm", "attention", "parallel_matmul")
_PATTERNS = {  # families that group bindings with FuseOpsByPattern, in priority order
    "attention": lambda mod, o: fp.attention_patterns(o.attention_max_keys),
    "parallel_matmul": lambda mod, o: fp.parallel_matmul_patterns(_split_inputs(mod)),
    "conv_act": lambda mod, o: fp.conv_act_patterns(fp.elementwise_kernels(mod)),
    "matmul_gelu": lambda mod, o: fp.matmul_gelu_patterns(),
    "matmul_bias": lambda mod, o: fp.matmul_bias_patterns(),
}
# Functions the pass never looks into: groups it or another partitioner already made.
_SEALED_ATTRS = ("Primitive", "Composite", "Codegen")


def _sealed(func: relax.Function) -> bool:
    attrs = func.attrs
    return attrs is not None and any(k in attrs for k in _SEALED_ATTRS)


def _graph_functions(mod: tvm.IRModule) -> list[tuple[tvm.ir.GlobalVar, relax.Function]]:
    return [
        (gv, f)
        for gv, f in mod.functions.items()
        if isinstance(f, relax.Function) and not _sealed(f)
    ]


def _split_inputs(mod: tvm.IRModule) -> set:
    return {v for _, f in _graph_functions(mod) for v in fp.split_inputs(f)}


def composite_calls(mod: tvm.IRModule) -> dict[str, int]:
    """How many times each family's composite functions are called from graph functions."""
    kind = {
        gv: str(f.attrs["Composite"])
        for gv, f in mod.functions.items()
        if isinstance(f, relax.Function) and f.attrs is not None and "Composite" in f.attrs
    }
    counts: dict[str, int] = {}

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar) and e.op in kind:
            family = fp.family_of(kind[e.op])
            counts[family] = counts.get(family, 0) + 1

    for _, func in _graph_functions(mod):
        relax.analysis.post_order_visit(func, visit)
    return counts


@register_pass
class Fuse(GraphPass):
    """Fuse conv/matmul + activation, layer norm, attention, parallel matmuls: one kernel each."""

    name = "fuse"
    hides_layers = True  # compression (int8, ...) runs before fuse: it quantizes layers

    @dataclass(frozen=True)
    class Options:
        conv_act: bool = True
        matmul_gelu: bool = True
        matmul_bias: bool = True
        layer_norm: bool = True
        attention: bool = True
        parallel_matmul: bool = True
        # Attention groups only where every row has at most this many keys, static (0: any);
        # a target whose attention kernel has a limit sets it (CUDA: registers per lane).
        attention_max_keys: int = 0

    def enabled(self) -> list[str]:
        return [
            f.name
            for f in fields(self.options)
            if f.name in FAMILIES and getattr(self.options, f.name)
        ]

    def run(self, mod: tvm.IRModule) -> PassResult:
        on = set(self.enabled())
        stats = dict.fromkeys(FAMILIES, 0)
        before = composite_calls(mod)
        new = mod

        self.errors: dict[str, str] = {}
        if "parallel_matmul" in on:
            new, stats["parallel_matmul"] = self._declining(
                "parallel_matmul", new, lambda m: _combine_parallel(m)
            )
        if "layer_norm" in on:
            new, stats["layer_norm"] = self._declining("layer_norm", new, _rewrite_layer_norms)

        patterns = [
            p for family, make in _PATTERNS.items() if family in on for p in make(new, self.options)
        ]
        entries = [gv.name_hint for gv, _ in _graph_functions(new)]
        if patterns and entries:
            new = relax.transform.FuseOpsByPattern(
                patterns, bind_constants=False, annotate_codegen=False, entry_functions=entries
            )(new)
            groups = {gv.name_hint for gv, f in new.functions.items() if _sealed(f)}
            new = inline_shape_params(
                new, groups
            )  # symbolic reshape targets: passes/_shape_params.py
        if stats["layer_norm"] or stats["parallel_matmul"]:
            new = relax.transform.DeadCodeElimination(entries)(new)

        stats["declined"] = len(self.errors)
        after = composite_calls(new)
        for family in _PATTERNS:
            if family == "parallel_matmul":
                continue  # counted as combined groups: the split may not be fusable
            stats[family] = after.get(family, 0) - before.get(family, 0)
        if _tvm.structural_equal(new, mod):
            return PassResult(
                mod, False, {**dict.fromkeys(FAMILIES, 0), "declined": stats["declined"]}
            )
        return PassResult(new, True, stats)

    def _declining(self, family: str, mod: tvm.IRModule, rewrite) -> tuple[tvm.IRModule, int]:
        """Run one family's graph rewrite; a rewrite that fails on this graph is declined (the
        module is left as it was, the reason kept in `.errors`), never a failed compile."""
        try:
            return rewrite(mod)
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types
            lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            self.errors[family] = lines[-1] if lines else type(err).__name__
            return mod, 0


def _combine_parallel(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    gvars = [gv for gv, _ in _graph_functions(mod)]
    return fp.combine_parallel_matmuls(mod, gvars)


def _rewrite_layer_norms(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    rewriter = fp.LayerNormRewriter()
    rewritten = {gv: rewriter.rewrite(f) for gv, f in _graph_functions(mod)}
    if not rewriter.count:
        return mod, 0
    return tvm.IRModule(
        {**dict(mod.functions.items()), **rewritten}, attrs=mod.attrs
    ), rewriter.count
