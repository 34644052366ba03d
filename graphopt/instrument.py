"""Instruments watch a pipeline run: print IR, dump numbered files, time passes, verify numbers.

Each instrument has `after_pass(index, pass_, stage, before, result, seconds)`; the pipeline
calls it after every pass. `finish()` (optional) runs once at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import tvm

from . import _tvm
from .errors import VerificationError
from .pass_infra import GraphPass, PassResult


def _stats_text(result: PassResult) -> str:
    if not result.stats:
        return ""
    return " (" + ", ".join(f"{k}={v}" for k, v in result.stats.items()) + ")"


@dataclass
class PrintAfter:
    """--print-after=PASS, --print-after-all, --print-after-change: TVMScript after passes."""

    names: Sequence[str] = ()
    all: bool = False
    only_changed: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stdout)

    def after_pass(self, index, pass_: GraphPass, stage, before, result: PassResult, seconds):
        wanted = self.all or pass_.name in self.names or (self.only_changed and result.modified)
        if not wanted:
            return
        changed = "changed" if result.modified else "unchanged"
        self.stream.write(
            f"// ----- IR after #{index} {pass_.name} [{stage}] ({changed}){_stats_text(result)}\n"
        )
        self.stream.write(_tvm.to_script(result.module) + "\n")


@dataclass
class DumpDir:
    """--dump-dir DIR: DIR/000-input.py, DIR/001-<pass>.py, ... plus DIR/pipeline.txt."""

    directory: Path

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write_input(self, mod: tvm.IRModule, pipeline_text: str) -> None:
        (self.directory / "pipeline.txt").write_text(pipeline_text + "\n")
        (self.directory / "000-input.py").write_text(_tvm.to_script(mod))

    def after_pass(self, index, pass_: GraphPass, stage, before, result: PassResult, seconds):
        safe = pass_.name.replace(".", "_")
        header = f"# {pass_.name} [{stage}] modified={result.modified}{_stats_text(result)}\n"
        path = self.directory / f"{index + 1:03d}-{safe}.py"
        path.write_text(header + _tvm.to_script(result.module))


@dataclass
class TimePasses:
    """--time-passes: a table of seconds per pass, with what each pass did."""

    rows: list[tuple[str, str, float, bool, str]] = field(default_factory=list)

    def after_pass(self, index, pass_: GraphPass, stage, before, result: PassResult, seconds):
        stats = ", ".join(f"{k}={v}" for k, v in result.stats.items())
        self.rows.append((pass_.name, stage, seconds, result.modified, stats))

    def table(self) -> str:
        from .tables import format_table

        total = sum(r[2] for r in self.rows) or 1e-12
        body = [
            [
                name,
                stage,
                f"{sec * 1000:.1f}",
                f"{100 * sec / total:.1f}%",
                "yes" if mod else "no",
                stats,
            ]
            for name, stage, sec, mod, stats in self.rows
        ]
        body.append(["total", "", f"{total * 1000:.1f}", "100%", "", ""])
        return format_table(["pass", "stage", "ms", "share", "changed", "did"], body)


Evaluator = Callable[[tvm.IRModule], list[np.ndarray]]


@dataclass
class VerifyEach:
    """--verify-each: run the module after every pass on the same inputs, compare to the input.

    `evaluate` builds and runs a module (compile.py supplies one that finishes lowering). The
    first pass whose outputs leave tolerance is named in a VerificationError. Tolerance is
    relative to the output scale: max|got - ref| <= rtol * max(1, max|ref|).
    """

    evaluate: Evaluator
    rtol: float = 1e-4
    stages: Sequence[str] = ("graph", "legalize", "schedule")
    reference: list[np.ndarray] | None = None
    checked: list[tuple[str, float]] = field(default_factory=list)

    def start(self, mod: tvm.IRModule) -> None:
        self.reference = self.evaluate(mod)

    def after_pass(self, index, pass_: GraphPass, stage, before, result: PassResult, seconds):
        if stage not in self.stages or not result.modified:
            return
        assert self.reference is not None, "VerifyEach.start() was not called"
        got = self.evaluate(result.module)
        err = max_relative_error(self.reference, got)
        self.checked.append((pass_.name, err))
        if err > self.rtol:
            raise VerificationError(
                f"--verify-each: pass #{index} '{pass_.name}' ({stage}) changed the outputs: "
                f"max error {err:.3g} relative to output scale (tolerance {self.rtol:g}); "
                f"passes checked before it were within tolerance"
            )


def max_relative_error(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """Largest max|got - ref| / max(1, max|ref|) over all outputs (inf on shape mismatch)."""
    if len(ref) != len(got):
        return float("inf")
    worst = 0.0
    for r, g in zip(ref, got):
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if r64.shape != g64.shape:
            return float("inf")
        if r64.size == 0:
            continue
        scale = max(1.0, float(np.max(np.abs(r64))))
        worst = max(worst, float(np.max(np.abs(r64 - g64))) / scale)
    return worst
