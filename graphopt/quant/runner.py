"""Build a Relax module once with the target's stages and run it many times (calibration and
sensitivity runs need speed: the same schedules as the final artifact, not naive loops)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tvm

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def build_runner(
    mod: tvm.IRModule, target: str = "x86", target_options: Mapping[str, str] | None = None
) -> Runner:
    from tvm import relax

    from ..artifact import call_vm
    from ..pipeline import instantiate, parse_pipeline, run_passes
    from ..target_infra import STAGES, make_target

    tgt = make_target(target, dict(target_options or {}))
    stages = tgt.stages()
    with tgt.tvm_target():
        for stage in STAGES:
            mod = run_passes(mod, instantiate(parse_pipeline(",".join(stages[stage]))), stage=stage)
    ex = tvm.compile(mod, target=tgt.tvm_target(), relax_pipeline=None)
    vm = relax.VirtualMachine(ex, tgt.device())
    return lambda arrays: call_vm(vm, arrays)
