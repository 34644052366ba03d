"""The one way a module goes through a target's stages and `tvm.compile`.

compile, --verify-each, calibration, sensitivity, the int8 speed check, the tests and the
benchmarks all build here, so what they run is what the artifact ships: the target's stage
passes (legalize, schedule, lower) and the target's own TIR pipeline (on CPU, register tiles
kept off the workspace pool: targets/cpu/lowering.py). Building anywhere else would time or
score kernels other than the shipped ones.

    run_stages(mod, target)          the target's stage passes, under the target
    compile_module(mod, target)      stages + tvm.compile -> executable
    build_runner(mod, target)        compile_module, then a callable that runs `main`
    ..., arg_checks=False            graphopt's own builds (probes, calibration, folding),
                                     whose kernels only the VM calls: no argument checks
    evaluate(mod, arrays)            minimal host build (legalize + lower) for constant
                                     folding and verify-each: no schedules, fast to build
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from .pipeline import instantiate, parse_pipeline, run_passes
from .target_infra import STAGES, Target, host_target, make_target

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def stage_passes(target: Target, records: Path | None = None) -> dict[str, list]:
    """The instantiated passes of each stage of `target` (tuning records first, if given)."""
    return {
        stage: instantiate(parse_pipeline(",".join(names)))
        for stage, names in target.stages(records).items()
    }


def run_stages(
    mod: tvm.IRModule,
    target: Target,
    stages: Sequence[str] = STAGES,
    *,
    passes: dict[str, list] | None = None,
    instruments: Sequence[object] = (),
    already_ran: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tvm.IRModule:
    """Run the named stages of `target` on `mod` under the target (passes may be given
    pre-instantiated, e.g. with a tuning database). `already_ran` collects the pass names."""
    passes = passes or stage_passes(target)
    ran = already_ran if already_ran is not None else []
    with target.tvm_target():
        for stage in stages:
            if progress:
                progress(f"target {target.name}: {stage} ({len(passes[stage])} passes)")
            mod = run_passes(mod, passes[stage], instruments, stage=stage, already_ran=list(ran))
            ran += [p.name for p in passes[stage]]
    return mod


def tvm_compile(mod: tvm.IRModule, target: Target, *, arg_checks: bool = True) -> Any:
    """`tvm.compile` of a module whose stages already ran: the target's TIR pipeline, no
    Relax pipeline of TVM's own (the stages are the Relax pipeline).

    `arg_checks=False` drops the kernels' argument checks (TIR asserts on each argument's
    type, shape and strides) for builds only graphopt's own VM calls: with many small
    arguments, as in the int8 probe graph, the checks are most of the generated code, and
    the build plus its JIT ran 12 s instead of 4.5 s. The kernels' arithmetic is unchanged;
    the VM still checks the inputs of `main`."""
    no_checks = tvm.transform.PassContext(config={"tirx.disable_assert": True})
    checks = contextlib.nullcontext() if arg_checks else no_checks
    with target.build_context(), target.tvm_target(), checks:
        return tvm.compile(
            mod,
            target=target.tvm_target(),
            relax_pipeline=None,
            tir_pipeline=target.tir_pipeline(),
        )


def compile_module(
    mod: tvm.IRModule, target: Target | None = None, *, arg_checks: bool = True
) -> Any:
    """Every stage of `target` (default: this host), then `tvm.compile`."""
    target = target or host_target()
    return tvm_compile(run_stages(mod, target), target, arg_checks=arg_checks)


def vm_runner(executable: Any, target: Target) -> Runner:
    """A callable running `main` of a built executable on the target's device."""
    from tvm import relax

    from .artifact import call_vm

    vm = relax.VirtualMachine(executable, target.device())
    return lambda arrays: call_vm(vm, arrays)


def resolve_target(target: Target | str | None, options: Mapping[str, str] | None = None) -> Target:
    """A Target from a Target, a registered name (with text options), or None (this host)."""
    if target is None:
        return host_target()
    if isinstance(target, str):
        return make_target(target, dict(options or {}))
    return target


def build_runner(
    mod: tvm.IRModule,
    target: Target | str | None = None,
    options: Mapping[str, str] | None = None,
    *,
    arg_checks: bool = True,
) -> Runner:
    """Build `mod` through every stage of `target` (default: this host) for repeated runs."""
    target = resolve_target(target, options)
    return vm_runner(compile_module(mod, target, arg_checks=arg_checks), target)


def lower_for_run(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Finish any intermediate module with generic legalization and the target's lower stage
    (no schedules: quick to build, exact)."""
    names = ["tvm.LegalizeOps", "tvm.FuseTIR", *target.stages()["lower"]]
    with target.tvm_target():
        return run_passes(mod, instantiate(parse_pipeline(",".join(names))), stage="lower")


def evaluate(
    mod: tvm.IRModule, arrays: Sequence[np.ndarray], target: Target | None = None
) -> list[np.ndarray]:
    """Run `main` of any intermediate module once on this host (constant folding,
    --verify-each, tests)."""
    target = target or host_target()
    executable = tvm_compile(lower_for_run(mod, target), target, arg_checks=False)
    return vm_runner(executable, target)(arrays)
