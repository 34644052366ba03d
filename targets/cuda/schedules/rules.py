"""The ordered GPU rules and `schedule_func`, which names the rule that scheduled a kernel.

graphopt's rules come first where dlight is weak (the fused attention group, which dlight
leaves to its Fallback; int8 GEMMs on tensor cores or dp4a, few-tap windows such as depthwise
convs, injective kernels, softmax and layer norm rows, bf16 tensor cores), then dlight's rules for
the rest, in the order TVM's default CUDA pipeline uses, with Transpose before the Fallback.
A dlight matmul that came out on tensor cores (wmma / mma intrinsics in the scheduled
function) is reported as `matmul-tensorcore`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import dlight

from graphopt.targets.cuda.schedules.attention import schedule_attention
from graphopt.targets.cuda.schedules.elementwise import schedule_elementwise
from graphopt.targets.cuda.schedules.int8_dp4a import schedule_dp4a
from graphopt.targets.cuda.schedules.row_reduction import schedule_rows
from graphopt.targets.cuda.schedules.tensorcore_bf16 import schedule_matmul_bf16
from graphopt.targets.cuda.schedules.tensorcore_int8 import schedule_int8_tensorcore
from graphopt.targets.cuda.schedules.window import schedule_window

SCHEDULED_ATTR = "tirx.is_scheduled"
Apply = Callable[[tirx.PrimFunc, object], "s_tir.Schedule | None"]


def _dlight(rule) -> Apply:
    return lambda func, target: rule.apply(func, target, False)


def _own(schedule) -> Apply:
    return lambda func, target: schedule(func)


# name -> how to apply; graphopt's own first. The order is the order of trial.
RULES: dict[str, Apply] = {
    "attention": _own(schedule_attention),
    "int8-tensorcore": schedule_int8_tensorcore,
    "int8-dp4a": _own(schedule_dp4a),
    "window": _own(schedule_window),
    "elementwise": _own(schedule_elementwise),
    "softmax": _own(schedule_rows("softmax")),
    "layer-norm": _own(schedule_rows("layer-norm")),
    "matmul-bf16": schedule_matmul_bf16,
    "matmul": _dlight(dlight.gpu.Matmul()),
    "gemv": _dlight(dlight.gpu.GEMV()),
    "reduction": _dlight(dlight.gpu.Reduction()),
    "general-reduction": _dlight(dlight.gpu.GeneralReduction()),
    "transpose": _dlight(dlight.gpu.Transpose()),
    "fallback": _dlight(dlight.gpu.Fallback()),
}
OWN_RULES = (
    "attention",
    "int8-tensorcore",
    "int8-dp4a",
    "window",
    "elementwise",
    "softmax",
    "layer-norm",
    "matmul-bf16",
)
# What the compile report can name besides RULES.
REPORTED = (*RULES, "matmul-tensorcore")
_TENSOR_CORE_SCOPES = ("wmma.matrix_a", "m16n8k8.matrixA", "m16n8k16.matrixA", "warp")


@dataclass
class Outcome:
    func: tirx.PrimFunc
    rule: str | None
    errors: list[str]


def uses_tensor_cores(func: tirx.PrimFunc) -> bool:
    """Whether a scheduled function stages operands in tensor-core fragments."""
    scopes: set[str] = set()

    def visit(block: s_tir.SBlock) -> s_tir.SBlock:
        scopes.update(buf.scope() for buf in block.alloc_buffers)
        return block

    tvm_ffi.structural_map(func.body, [(s_tir.SBlock, visit)])
    return any(s.startswith(_TENSOR_CORE_SCOPES) for s in scopes)


def thread_bound(func: tirx.PrimFunc) -> bool:
    """Whether some loop of the function is bound to a GPU thread or block index."""
    found: list[bool] = []

    def visit(loop: tirx.For) -> tirx.For:
        if loop.thread_binding is not None:
            found.append(True)
        return loop

    tvm_ffi.structural_map(func.body, [(tirx.For, visit)])
    return bool(found)


def schedule_func(func: tirx.PrimFunc, target, enabled: tuple[str, ...] = ()) -> Outcome:
    """The first enabled rule that schedules `func`; rules that raise count as errors."""
    errors = []
    for name, apply in RULES.items():
        if enabled and name not in enabled:
            continue
        try:
            sch = apply(func, target)
        except Exception as err:  # noqa: BLE001 - a rule that raises does not apply
            errors.append(f"{name}: {str(err).strip().splitlines()[-1] if str(err) else err!r}")
            continue
        if sch is None:
            continue
        if isinstance(sch, list):
            sch = sch[0]
        new = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
        if name == "matmul" and uses_tensor_cores(new):
            name = "matmul-tensorcore"
        return Outcome(new, name, errors)
    return Outcome(func, None, errors)
