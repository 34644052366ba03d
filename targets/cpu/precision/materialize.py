"""Which CPU kernel a 16-bit matmul op becomes and how its natural weights are packed for it
(used by `materialize-precision`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tvm

from graphopt.precision_ops import RECIPE_ATTR, PrecisionMatmulSpec
from graphopt.targets.cpu.precision import kernels as K

Pack = Callable[[list[np.ndarray]], list[np.ndarray]]


def build(spec: PrecisionMatmulSpec) -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The panel kernel of `spec` (its recipe now says the packed layout) and its packer."""
    func = K.matmul16_kernel(spec)
    built = dataclasses.replace(spec, layout=K.LAYOUT)

    def pack(consts: list[np.ndarray]) -> list[np.ndarray]:
        return [K.pack_panels(consts[0], spec)]

    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, built.text()), pack
