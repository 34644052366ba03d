"""int8 as compression methods: `Int8` (post-training quantization, `--quantize int8`) and
`ImportedInt8` (a model that arrives quantized: its own scales, integer kernels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import tvm

from .. import CompressionContext, CompressionPlan
from .flow import QuantOptions, QuantStep, imported_step, quantize_step

MANIFEST_KEY = "quantization"


def _plan(step: QuantStep | None) -> CompressionPlan | None:
    if step is None:
        return None
    workdir = step.workdir
    tighten = step.tighten
    return CompressionPlan(
        MANIFEST_KEY,
        step.passes,
        step.manifest,
        step.table,
        step.check,
        cleanup=workdir.cleanup if workdir is not None else (lambda: None),
        budget=step.budget,
        tighten=(lambda: _plan(tighten())) if tighten is not None else None,
    )


@dataclass
class Int8:
    """Post-training int8: calibrate, per-layer sensitivity, `--max-drop`, QDQ + lower-int8."""

    options: QuantOptions
    name: str = "int8"
    requires: tuple[str, ...] = ("fold-constants",)
    # Calibrates on samples of any size in the dims' ranges; its kernels take a symbolic
    # row count, and NHWC convs a symbolic batch, height and width (flow.py).
    symbolic_shapes: ClassVar[bool] = True

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        return _plan(quantize_step(mod, ctx.inputs, self.options, ctx.target, None, ctx.progress))


@dataclass
class ImportedInt8:
    """An already-quantized model (QDQ or QLinear* ONNX): int8 weights back, integer kernels."""

    name: str = "imported-int8"
    requires: tuple[str, ...] = ()

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        return _plan(imported_step(mod, ctx.target))
