"""The CUDA target's stages as pass names (TVM's CUDA pipeline, spelled out, with graphopt's
precision pass and GPU rules in it), so the whole flow reads on one screen."""

from __future__ import annotations

from pathlib import Path

# Importer pad kernels folded into the convs (fold-pad), optionally fp16 (mixed-precision),
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

# TVM's CUDA dataflow_lower_passes and finalize_passes; `cuda-graphs` stands where TVM's
# RewriteCUDAGraph does.
LOWER_HEAD = [
    "tvm.RewriteDataflowReshape",
    "tvm.ToNonDataflow",
    "tvm.RemovePurityChecking",
    "tvm.CallTIRRewrite",
    "tvm.StaticPlanBlockMemory",
]
LOWER_TAIL = [
    "tvm.LowerAllocTensor",
    "tvm.KillAfterLastUse",
    "tvm.LowerRuntimeBuiltin",
    "tvm.ComputePrimValue",
    "tvm.VMShapeLower",
    "tvm.AttachGlobalSymbol",
]


def legalize_stage(precision: str) -> list[str]:
    half = ["mixed-precision"] if precision == "fp16" else []
    return [*LEGALIZE_HEAD, *half, *LEGALIZE_TAIL]


def schedule_stage(tuning_db: Path | None, rules: tuple[str, ...]) -> list[str]:
    """Tuning records first, then graphopt's GPU rules and dlight's for the rest."""
    stage = [f"tvm.MetaScheduleApplyDatabase{{work_dir={tuning_db}}}"] if tuning_db else []
    option = f"{{rules={':'.join(rules)}}}" if rules else ""
    return [*stage, f"schedule-cuda{option}"]


def lower_stage(cuda_graphs: bool) -> list[str]:
    return [*LOWER_HEAD, *(["cuda-graphs"] if cuda_graphs else []), *LOWER_TAIL]
