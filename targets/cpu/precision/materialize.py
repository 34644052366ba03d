"""Which CPU kernel a 16-bit matmul op becomes and how its natural weights are packed for it
(used by `materialize-precision`): a pair kernel where the target has an instruction that
multiplies 16-bit values into fp32 sums (`vdpbf16ps` for bf16 on x86 with AVX512_BF16; on
aarch64 BFMLALB/T for bf16 with +bf16, FMLAL for fp16 with +fp16fml), else the fp32-FMA panel
kernel every CPU runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tvm

from graphopt import _tvm
from graphopt.errors import PipelineError
from graphopt.precision_depthwise import DepthwiseSpec
from graphopt.precision_ops import (
    RECIPE_ATTR,
    PrecisionMatmulSpec,
    cpu_features,
    has_dpbf16,
    is_arm,
)
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision import kernels as K
from graphopt.targets.cpu.precision.depthwise import depthwise16_kernel
from graphopt.targets.cpu.precision.neon_long import BFMLAL, FMLAL
from graphopt.targets.cpu.schedules.common import cpu_info

Pack = Callable[[list[np.ndarray]], list[np.ndarray]]
PAIR_KERNELS = {i.name: i for i in (D.DPBF16, BFMLAL, FMLAL)}
KERNELS = ("auto", "fma", *PAIR_KERNELS)


def current_target() -> tvm.target.Target:
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        target = _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
    return target


def pair_instruction(target: tvm.target.Target, precision: str) -> D.PairInstruction | None:
    """The instruction `target` multiplies `precision` values into fp32 sums with, if any."""
    features = cpu_features(target)
    if is_arm(target):
        wanted = {"bf16": (BFMLAL, "bf16"), "fp16": (FMLAL, "fp16fml")}[precision]
        return wanted[0] if wanted[1] in features else None
    return D.DPBF16 if precision == "bf16" and has_dpbf16(target) else None


def resolve_kernel(name: str, precision: str) -> str:
    """The kernel a `kernel=` option names for `precision` on the current target (else this
    host); `auto`: the target's pair instruction where it has one for `precision`, else fma."""
    if name not in KERNELS:
        raise PipelineError(f"unknown 16-bit kernel '{name}' ({', '.join(KERNELS)})")
    if name == "fma":
        return "fma"
    available = pair_instruction(current_target(), precision)
    if name == "auto":
        return available.name if available is not None else "fma"
    if available is None or available.name != name:
        wanted = PAIR_KERNELS[name]
        raise PipelineError(
            f"kernel={name} needs {wanted.precision} on a target CPU with {_NEEDS[name]}"
        )
    return name


_NEEDS = {
    "dpbf16": "AVX512_BF16 (mcpu=znver4, sapphirerapids, ...)",
    "bfmlal": "+bf16 (aarch64: neoverse-v1, neoverse-n2, ...)",
    "fmlal": "+fp16fml (aarch64: neoverse-v1, neoverse-n2, ...)",
}


def build(spec: PrecisionMatmulSpec, kernel: str = "fma") -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The `kernel` of `spec` (its recipe now says the packed layout) and its weight packer."""
    if kernel in PAIR_KERNELS:
        instr = PAIR_KERNELS[kernel]
        func, layout = D.pair_kernel(spec, instr), kernel

        def pack_one(w, spec):
            return D.pack_pairs(w, spec, instr)
    else:
        info = cpu_info(current_target())
        lanes = 16 if info is not None and info.lanes >= 16 else K.LANES
        func, layout, pack_one = K.matmul16_kernel(spec, lanes), K.LAYOUT, K.pack_panels
    built = dataclasses.replace(spec, layout=layout)

    def pack(consts: list[np.ndarray]) -> list[np.ndarray]:
        return [pack_one(consts[0], spec)]

    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, built.text()), pack


def build_depthwise(spec: DepthwiseSpec) -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The vectorized depthwise kernel for the current target's SIMD width (weights as
    they are: [KH, KW, C] bits, a vector of channels a load)."""
    target = current_target()
    info = cpu_info(target)
    func = depthwise16_kernel(spec, info.lanes if info is not None else 4, has_dpbf16(target))
    return func.without_attr("global_symbol"), lambda consts: [consts[0]]
