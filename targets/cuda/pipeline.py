"""The CUDA target's stages as pass names (TVM's CUDA pipeline, spelled out, with graphopt's
precision pass and GPU rules in it), so the whole flow reads on one screen."""

from __future__ import annotations

from pathlib import Path

from graphopt.passes.fuse import FAMILIES
from graphopt.target_infra import VM_LOWER_HEAD, VM_LOWER_TAIL
from graphopt.targets.cuda.schedules.attention import MAX_KEYS

# The graph-level `fuse` groups (-O3) inlined back first: they are planned for the CPU rules,
# mixed-precision (TVM's ToMixedPrecision) does not look inside them (with precision=fp16 their
# matmuls stayed fp32) and an attention group of any length would reach dlight's Fallback;
# FuseOps and this stage's own attention fuse make the GPU's groups. Then importer pad kernels
# folded into the convs (fold-pad), optionally fp16 or bf16 (mixed-precision), then TVM's CUDA
# legalization without its dlight step: scheduling is its own stage.
LEGALIZE_HEAD = [
    "tvm.InlinePrivateFunctions",
    "tvm.backend.DispatchSampling",
    "tvm.backend.DispatchSortScan",
    "fold-pad",
]
LEGALIZE_TAIL = [
    "tvm.LegalizeOps",
    "tvm.AnnotateTIROpPattern",
    "tvm.FoldConstant",
    "tvm.FuseOps",
    "tvm.FuseTIR",
]


# precision= -> the mixed-precision pass that makes it (fp32: none).
HALF_PASSES = {"fp16": "mixed-precision", "bf16": "mixed-precision{dtype=bfloat16}"}

# `fuse` with its attention family alone, for rows the `attention` rule takes (static, at most
# MAX_KEYS keys): the rule makes each group one kernel at every -O level. After
# mixed-precision, which does not look into fused groups (a group fused before it would stay
# fp32), and before FuseOps, which would split it up.
_OFF = [f"{f}=false" for f in FAMILIES if f != "attention"]
ATTENTION_FUSE = "fuse{" + ",".join([*_OFF, f"attention_max_keys={MAX_KEYS}"]) + "}"


def legalize_stage(precision: str, rules: tuple[str, ...] = ()) -> list[str]:
    """`rules=` without `attention`: no attention groups (three kernels, as before the rule;
    dlight would take a group with its Fallback)."""
    half = [HALF_PASSES[precision]] if precision in HALF_PASSES else []
    fuse = [ATTENTION_FUSE] if not rules or "attention" in rules else []
    return [*LEGALIZE_HEAD, *half, *fuse, *LEGALIZE_TAIL]


def schedule_stage(tuning_db: Path | None, rules: tuple[str, ...]) -> list[str]:
    """Tuning records first, the int8 ops' GPU kernels (a no-op without --quantize int8),
    then graphopt's GPU rules and dlight's for the rest."""
    stage = [f"tvm.MetaScheduleApplyDatabase{{work_dir={tuning_db}}}"] if tuning_db else []
    option = f"{{rules={':'.join(rules)}}}" if rules else ""
    return [*stage, "materialize-int8-cuda", f"schedule-cuda{option}"]


def lower_stage(cuda_graphs: bool) -> list[str]:
    """TVM's VM lowering; `cuda-graphs` stands where TVM's RewriteCUDAGraph does."""
    return [*VM_LOWER_HEAD, *(["cuda-graphs"] if cuda_graphs else []), *VM_LOWER_TAIL]
