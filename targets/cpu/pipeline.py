"""The stages shared by the CPU targets, as pass names, so a target file reads on one screen.

x86 and arm take these lists and switch single passes on or off from their options.
"""

from __future__ import annotations

from pathlib import Path

from graphopt.target_infra import VM_LOWER_HEAD, VM_LOWER_TAIL

# Relax-to-VM lowering of every CPU target: TVM's VM lowering, nothing inserted.
CPU_LOWER = [*VM_LOWER_HEAD, *VM_LOWER_TAIL]

# Importer pad kernels folded into the convs that read them (passes/fold_pad.py), operators to
# TIR (fp32 erf / GELU and softmax first, with polynomials that vectorize: fast-erf and
# fast-softmax in targets/cpu/passes/), then fold what became constant and fuse elementwise
# tails into kernels: plain tvm.compile on CPU does neither. `fuse-precision-epilogue` folds
# the bias adds, activations and residual adds after `lower-precision`'s 16-bit matmuls into
# them (FuseOps cannot: those kernels are opaque loops); `precision-attention` puts -O3's
# fused attention groups of a bf16 model on the bf16 attention kernel (where the target has
# AVX512_BF16); `precision-handoff` then has the
# producers of activations read only by 16-bit matmuls store them rounded to 16 bits (the
# rounding an elementwise kernel FuseOps fuses into the producer).
CPU_LEGALIZE = [
    "tvm.backend.DispatchSampling",
    "tvm.backend.DispatchSortScan",
    "fold-pad",
    "fuse-precision-epilogue",
    "precision-attention",
    "precision-handoff",
    "fast-erf",
    "fast-softmax",
    "tvm.LegalizeOps",
    "tvm.AnnotateTIROpPattern",
    "tvm.FoldConstant",
    "tvm.FuseOps",
    "tvm.FuseTIR",
]

# x86 only (measured there): convs in NHWC, channels in SIMD lanes (passes/layout.py: a
# pointwise conv is a plain matmul, a depthwise conv one vector multiply-add per tap at any
# stride; MobileNetV2 1.3x faster than NCHW); 1x1 convs left in NCHW (`layout=NCHW`) over
# maps whose width is no whole number of vectors computed over one H*W row
# (targets/cpu/passes/flatten_pointwise.py). After the layout, `sparsify` gives 1x1 convs and
# matmuls whose constant weights are mostly zero blocks the block-sparse op (the x86 target
# fills in its block size and threshold: targets/cpu/sparse/rules.py). `sink-transposes` moves
# the transposes left around `lower-precision`'s pointwise convs below their bias adds and
# activations, so the pairs cancel (before `fuse-precision-epilogue` folds those into the
# matmuls).
X86_LEGALIZE = [
    *CPU_LEGALIZE[: CPU_LEGALIZE.index("fold-pad") + 1],
    "layout",
    "sink-transposes",
    "sparsify",
    "flatten-pointwise",
    *CPU_LEGALIZE[CPU_LEGALIZE.index("fold-pad") + 1 :],
]


def cpu_schedule_stage(
    tuning_db: Path | None, default_schedules: bool, sparse: bool = True
) -> list[str]:
    """The int8 kernels for the target first (`materialize-int8`: lower-int8's portable
    kernels rebuilt for the target's dot instruction, constants packed; `materialize-int4`:
    lower-int4's int4-weight matmuls as panel kernels; `materialize-sparse`: sparsify's
    block-sparse kernels vectorized; `materialize-precision`: lower-precision's 16-bit
    matmuls as panel kernels; `fuse-expand-depthwise`: a bf16 pointwise conv and the
    depthwise conv after it as one kernel where the map between them outgrows the L2
    caches), then tuned records
    (when a database is given), then rule-based schedules for the rest.

    `schedule-cpu` skips kernels the database already scheduled, and the int8 kernels.
    `sparse=False` keeps int8 layers with mostly zero weight blocks dense too.
    """
    stage = [
        "materialize-int8" if sparse else "materialize-int8{sparse=false}",
        "materialize-int4",
        "materialize-precision",
        "fuse-expand-depthwise",
        "materialize-sparse",
    ]
    if tuning_db:
        stage.append(f"tvm.MetaScheduleApplyDatabase{{work_dir={tuning_db}}}")
    return stage + (["schedule-cpu"] if default_schedules else [])
