"""Which CPU kernel a 16-bit matmul op becomes and how its natural weights are packed for it
(used by `materialize-precision`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tvm

from graphopt.precision_ops import RECIPE_ATTR, PrecisionMatmulSpec
from graphopt.targets.cpu.precision import kernels as K

FALLBACK = "fp32-fma"  # 16-bit weights widened in registers, fp32 FMAs (kernels.py)

Pack = Callable[[list[np.ndarray]], list[np.ndarray]]
DPBF16 = "dpbf16"


def build(
    spec: PrecisionMatmulSpec, target: tvm.target.Target | None
) -> tuple[tvm.tirx.PrimFunc, Pack, str]:
    """The kernel of `spec` for `target` (its recipe now says the packed layout), its packer
    and its kind."""
    del target  # every CPU runs the fp32-FMA panel kernel (gate.py says why)
    func = K.matmul16_kernel(spec)
    built = dataclasses.replace(spec, layout=K.LAYOUT)

    def pack(consts: list[np.ndarray]) -> list[np.ndarray]:
        return [K.pack_panels(consts[0], spec)]

    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, built.text()), pack, FALLBACK
