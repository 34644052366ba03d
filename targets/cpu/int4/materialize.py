"""Which CPU kernel an int4 op becomes and how its natural constants are packed for it
(used by `materialize-int4`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tvm

from graphopt.int4_ops import RECIPE_ATTR, Int4MatmulSpec
from graphopt.targets.cpu.int4 import kernels as K4

Pack = Callable[[list[np.ndarray]], list[np.ndarray]]
CONSTANTS = 3  # packed, scales, zeros: after x in the call


def build(spec: Int4MatmulSpec) -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The panel kernel of `spec` (its recipe now says the panel layout) and its packer."""
    func = K4.int4_matmul_kernel(spec)
    built = dataclasses.replace(spec, layout=K4.LAYOUT)

    def pack(consts: list[np.ndarray]) -> list[np.ndarray]:
        return K4.pack_panels(*consts, spec)

    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, built.text()), pack
