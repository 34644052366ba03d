"""Which CPU kernel a 16-bit matmul op becomes and how its natural weights are packed for it
(used by `materialize-precision`): `vdpbf16ps` for bf16 on x86 CPUs with AVX512_BF16, else the
fp32-FMA panel kernel every CPU runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tvm

from graphopt import _tvm
from graphopt.errors import PipelineError
from graphopt.precision_depthwise import DepthwiseSpec
from graphopt.precision_ops import RECIPE_ATTR, PrecisionMatmulSpec, has_dpbf16
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision import kernels as K
from graphopt.targets.cpu.precision.depthwise import depthwise16_kernel
from graphopt.targets.cpu.schedules.common import cpu_info

Pack = Callable[[list[np.ndarray]], list[np.ndarray]]
KERNELS = ("auto", "fma", "dpbf16")


def current_target() -> tvm.target.Target:
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        target = _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
    return target


def resolve_kernel(name: str, precision: str) -> str:
    """The kernel a `kernel=` option names for `precision` on the current target (else this
    host); `auto`: dpbf16 for bf16 where the CPU has AVX512_BF16, else fma. fp16 always runs
    fma (no fp16 dot-product kernel)."""
    if name not in KERNELS:
        raise PipelineError(f"unknown 16-bit kernel '{name}' ({', '.join(KERNELS)})")
    if precision != "bf16" or name == "fma":
        return "fma"
    available = has_dpbf16(current_target())
    if name == "dpbf16" and not available:
        raise PipelineError(
            "kernel=dpbf16 needs a target CPU with AVX512_BF16 (mcpu=znver4, sapphirerapids, ...)"
        )
    return "dpbf16" if available else "fma"


def build(spec: PrecisionMatmulSpec, kernel: str = "fma") -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The `kernel` of `spec` (its recipe now says the packed layout) and its weight packer."""
    if kernel == "dpbf16":
        func, layout, pack_one = D.dpbf16_kernel(spec), D.LAYOUT, D.pack_pairs
    else:
        func, layout, pack_one = K.matmul16_kernel(spec), K.LAYOUT, K.pack_panels
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
