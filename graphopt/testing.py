"""Helpers for tests and pass authors: structure checks, honesty checks, numeric checks.

result = check_rewrite(MyPass(), Before, Expected)     # structure + honest `modified`
check_no_change(MyPass(), Unrelated)                    # "does not fire"
check_numerics(MyPass(), Before)                        # same outputs on random inputs
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm

from . import _tvm
from .frontend.shapes import TensorSpec
from .inputs import random_inputs
from .instrument import max_relative_error
from .pass_infra import GraphPass, PassResult


def _well_formed(mod: tvm.IRModule, when: str, pass_name: str) -> None:
    error = _tvm.well_formed_error(mod)
    assert error is None, f"module is not well-formed {when} {pass_name}: {error}"


def apply_checked(pass_: GraphPass, mod: tvm.IRModule) -> PassResult:
    """Run a pass, checking well-formedness around it and that `modified` tells the truth."""
    _well_formed(mod, "before", pass_.name)
    result = pass_(mod)
    _well_formed(result.module, "after", pass_.name)
    changed = not _tvm.structural_equal(result.module, mod)
    assert result.modified == changed, (
        f"pass {pass_.name} reported modified={result.modified} but the module "
        f"{'changed' if changed else 'did not change'}"
    )
    return result


def check_rewrite(pass_: GraphPass, before: tvm.IRModule, expected: tvm.IRModule) -> PassResult:
    result = apply_checked(pass_, before)
    assert result.modified, f"pass {pass_.name} did not fire"
    tvm.ir.assert_structural_equal(result.module, expected, map_free_vars=True)
    return result


def check_no_change(pass_: GraphPass, mod: tvm.IRModule) -> PassResult:
    result = apply_checked(pass_, mod)
    assert not result.modified, f"pass {pass_.name} fired where it should not"
    return result


def param_specs(mod: tvm.IRModule, func: str = "main") -> list[TensorSpec]:
    specs = []
    for p in mod[func].params:
        ty = p.ty
        shape = tuple(int(d) for d in ty.shape.values)
        specs.append(TensorSpec(p.name, shape, str(ty.dtype)))
    return specs


def run_module(mod: tvm.IRModule, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run `main` of any intermediate module once on this host (graphopt.build.evaluate)."""
    from .build import evaluate

    return evaluate(mod, arrays)


def check_numerics(
    pass_: GraphPass, mod: tvm.IRModule, rtol: float = 1e-5, seed: int = 0
) -> PassResult:
    """The pass keeps outputs within rtol (relative to output scale) on random inputs."""
    result = apply_checked(pass_, mod)
    arrays = list(random_inputs(param_specs(mod), seed=seed).values())
    err = max_relative_error(run_module(mod, arrays), run_module(result.module, arrays))
    assert err <= rtol, f"pass {pass_.name} changed outputs: relative error {err:.3g} > {rtol}"
    return result


def single_input_module(shape, build, dtype: str = "float32") -> tvm.IRModule:
    """A Relax module whose `main(x)` returns `build(bb, x)`: the test graph of one op chain."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def run_through_target(mod: tvm.IRModule, *arrays: np.ndarray, target="x86") -> np.ndarray:
    """Build with the target's own stages (legalize, schedule, lower) and run `main` once.

    Unlike `run_module`, the target's stage passes (fold-pad, fast-erf, schedule-cpu) run too.
    `target` is a target name or a `Target` (to pass options).
    """
    from .build import build_runner
    from .target_infra import make_target

    tgt = make_target(target) if isinstance(target, str) else target
    return build_runner(mod, tgt)(list(arrays))[0]


def constant_types(mod: tvm.IRModule, func: str = "main") -> list[tuple[str, tuple]]:
    """(dtype, shape) of every constant in `func`: what a compression pass stored."""
    found: list[tuple[str, tuple]] = []

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.GenericConst):
            value = _tvm.constant_value(expr)
            found.append((str(value.dtype), value.shape))

    tvm.relax.analysis.post_order_visit(mod[func], visit)
    return found
