"""Compression methods behind one interface: what `compile` runs between the graph passes and
the target stages.

A method (int8, int4, pruning; mixed precision next) looks at the graph, calibrates
and decides, and returns a `CompressionPlan`: the passes to run (so instruments, --dump-dir
and the pass log see them), its manifest entry, a report table, and how to score the built
artifact. `compile` runs every selected method in order and has no method-specific code.

Where compression runs: after the graph passes that keep layers visible and before the first
pass that hides them in fused functions (a pass with `hides_layers = True`, e.g. `fuse`), so
`-O0 .. -O3` compress the same layers (`split_for_compression`). Shared machinery lives in
`common/` (layer discovery, calibration data, metrics, the accuracy-budget search); each
method's own code in its folder (`int8/`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import tvm

from ..pass_infra import GraphPass
from ..target_infra import Target

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass
class CompressionContext:
    """What a method may use besides the module: the model's inputs and the compile target."""

    inputs: Sequence[Any]  # frontend TensorSpecs of the model's inputs
    target: Target
    progress: Callable[[str], None] = lambda _msg: None
    # The example size of each symbolic dim (its range's), for what is counted at one size
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class CompressionPlan:
    """A method's decision: passes to run, its manifest entry and the artifact check."""

    method: str  # manifest key ("quantization" for int8, as artifacts have always said)
    passes: list[GraphPass]
    manifest: dict
    table: str = ""
    check: Callable[[Runner], float] | None = field(default=None, repr=False)
    cleanup: Callable[[], None] = field(default=lambda: None, repr=False)
    # The lowest artifact score the accuracy budget (--max-drop) accepts; None: no budget.
    budget: float | None = None
    # The same method with more kept uncompressed (the most sensitive layer next); None when
    # nothing is left to keep. compile calls it while the artifact misses the budget.
    tighten: Callable[[], CompressionPlan | None] | None = field(default=None, repr=False)
    # Graph passes the method required (`CompressionMethod.requires`) that compile ran for it.
    prefix: list[GraphPass] = field(default_factory=list)

    def check_artifact(self, run: Runner) -> bool:
        """Score the built executable itself (the arithmetic it really runs, integer kernels
        included) into the manifest; False when it misses the budget."""
        if self.check is None or not self.manifest.get("accuracy"):
            return True
        score = round(self.check(run), 4)
        self.manifest["accuracy"]["artifact"] = score
        return self.budget is None or score >= self.budget - 1e-9


class CompressionMethod(Protocol):
    """One compression method, selected by a CLI flag (`--quantize int8`, ...)."""

    name: str
    # Graph passes the method needs to have run first (e.g. fold-constants: int8 quantizes
    # layers whose weights are constants, and -O0 leaves a Gemm's transposed weight unfolded).
    # compile runs the missing ones right before the method, so every -O level sees the same.
    requires: tuple[str, ...]

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        """Calibrate and decide; None when the method has nothing to do on this graph."""
        ...


def split_for_compression(
    passes: Sequence[GraphPass],
) -> tuple[list[GraphPass], list[GraphPass]]:
    """Graph passes before compression, and after it: compression runs right before the first
    pass that hides layers inside fused functions (none: after every graph pass)."""
    for i, p in enumerate(passes):
        if getattr(p, "hides_layers", False):
            return list(passes[:i]), list(passes[i:])
    return list(passes), []


def default_methods() -> list[CompressionMethod]:
    """Methods that apply when none is asked for: a model that arrives quantized keeps its own
    int8 weights and runs integer kernels."""
    from .int8.method import ImportedInt8

    return [ImportedInt8()]
