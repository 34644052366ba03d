"""The CUDA target's stages as pass names (TVM's CUDA pipeline, spelled out, with graphopt's
precision pass and GPU rules in it), so the whole flow reads on one screen."""

from __future__ import annotations

from pathlib import Path

from graphopt.target_infra import VM_LOWER_HEAD, VM_LOWER_TAIL

# Importer pad kernels folded into the convs (fold-pad), optionally fp16 or bf16 (mixed-precision),
# then TVM's CUDA legalization without its dlight step: scheduling is its own stage.
LEGALIZE_HEAD = [
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


def legalize_stage(precision: str) -> list[str]:
    half = [HALF_PASSES[precision]] if precision in HALF_PASSES else []
    return [*LEGALIZE_HEAD, *half, *LEGALIZE_TAIL]


def schedule_stage(tuning_db: Path | None, rules: tuple[str, ...]) -> list[str]:
    """Tuning records first, the int8 ops' GPU kernels (a no-op without --quantize int8),
    then graphopt's GPU rules and dlight's for the rest."""
    stage = [f"tvm.MetaScheduleApplyDatabase{{work_dir={tuning_db}}}"] if tuning_db else []
    option = f"{{rules={':'.join(rules)}}}" if rules else ""
    return [*stage, "materialize-int8-cuda", f"schedule-cuda{option}"]


def lower_stage(cuda_graphs: bool) -> list[str]:
    """TVM's VM lowering; `cuda-graphs` stands where TVM's RewriteCUDAGraph does."""
    return [*VM_LOWER_HEAD, *(["cuda-graphs"] if cuda_graphs else []), *VM_LOWER_TAIL]
