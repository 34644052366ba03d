"""x86-64 CPU through LLVM, tuned for the host CPU unless told otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tvm

from graphopt import _tvm
from graphopt.errors import TargetError
from graphopt.target_infra import Target, register_target
from graphopt.targets.cpu import lowering as cpu_lowering
from graphopt.targets.cpu.pipeline import CPU_LOWER, X86_LEGALIZE, cpu_schedule_stage
from graphopt.targets.cpu.sparse.rules import layout_item, sparsify_item


@register_target
class X86(Target):
    """x86-64 CPU (LLVM); -mcpu detected from this host unless given."""

    name = "x86"

    @dataclass(frozen=True)
    class Options:
        mcpu: str = ""
        mattr: tuple[str, ...] = ()
        num_cores: int = 0
        triple: str = "x86_64-linux-gnu"
        # Rule-based default schedules (schedule-cpu, targets/cpu/passes/); schedules=false gives
        # TVM's unscheduled loops (for comparison and for bisecting a miscompile).
        schedules: bool = True
        # fp32 erf / GELU as a vectorizable polynomial (max abs error 4.4e-7); false: libm erff.
        fast_erf: bool = True
        # fp32 softmax with a vectorizable exp (relative error ~1e-7); false: libm expf.
        fast_softmax: bool = True
        # Activation layout of the convs: NHWC (converted by the `layout` pass), NCHW (as
        # imported), or auto: NHWC unless the 1x1 convs are nearly all scattered zeros and
        # `sparse` is on (then NCHW, where the sparse kernels take single zeros).
        layout: str = "auto"
        # Block-sparse kernels for 1x1 convs and matmuls whose constant weights are mostly
        # zero blocks (`sparsify`; int8 layers: `materialize-int8`; docs/SPARSITY.md); false:
        # every layer dense.
        sparse: bool = True

        def __post_init__(self) -> None:
            if self.layout not in ("auto", "NHWC", "NCHW"):
                raise TargetError(f"x86 option layout={self.layout!r}: use auto, NHWC or NCHW")

    @classmethod
    def default_options(cls) -> Options:
        return cls.Options(mcpu=_tvm.host_cpu_name(), num_cores=os.cpu_count() or 1)

    def tvm_target(self) -> tvm.target.Target:
        spec: dict = {"kind": "llvm", "mtriple": self.options.triple}
        if self.options.mcpu:
            spec["mcpu"] = self.options.mcpu
        if self.options.mattr:
            spec["mattr"] = list(self.options.mattr)
        if self.options.num_cores:
            spec["num-cores"] = self.options.num_cores
        return _tvm.make_target(spec)

    def _wanted(self, stage_pass: str) -> bool:
        off = {
            "fast-erf": not self.options.fast_erf,
            "fast-softmax": not self.options.fast_softmax,
            "layout": self.options.layout == "NCHW",
            "sparsify": not self.options.sparse,
        }
        return not off.get(stage_pass, False)

    def _item(self, stage_pass: str) -> str:
        """The pipeline item of a stage pass, with the options this target gives it."""
        if stage_pass == "sparsify":
            return sparsify_item(self.tvm_target())
        if stage_pass == "layout" and self.options.layout == "auto" and self.options.sparse:
            return layout_item(self.tvm_target())
        return stage_pass

    def stages(self, tuning_db: Path | None = None) -> dict[str, list[str]]:
        return {
            "legalize": [self._item(p) for p in X86_LEGALIZE if self._wanted(p)],
            "schedule": cpu_schedule_stage(tuning_db, self.options.schedules, self.options.sparse),
            "lower": list(CPU_LOWER),
        }

    def pass_options(self, pass_name: str) -> dict[str, str]:
        # int8 tensors between conv kernels in NHWC: channels in SIMD lanes, a 1x1 conv is the
        # int8 matmul, a depthwise conv one vector multiply-add per tap (docs/INT8.md).
        return {"layout": "NHWC"} if pass_name == "lower-int8" else {}

    def tir_pipeline(self) -> str:
        return cpu_lowering.tir_pipeline()
