"""Which CPU kernel an int4 op becomes and how its natural constants are packed for it
(used by `materialize-int4`): W4 x fp32 ops the panel kernel (`kernels.py`), W4A8 ops the
int8-dot kernel of the target's scheme (`a8_kernels.py`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tvm

from graphopt.errors import PipelineError
from graphopt.int4_ops import RECIPE_ATTR, Int4MatmulSpec
from graphopt.targets.cpu.int4 import a8_kernels as A8
from graphopt.targets.cpu.int4 import kernels as K4
from graphopt.targets.cpu.int8.kernels import Isa

Pack = Callable[[list[np.ndarray]], list[np.ndarray]]
CONSTANTS = 3  # packed, scales, zeros: after x in the call


def build(spec: Int4MatmulSpec, isa: Isa) -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The target kernel of `spec` (its recipe now says the packed layout) and its packer."""
    if spec.act == "int8":
        try:
            plan = A8.plan_for(spec, isa)
        except ValueError as e:
            raise PipelineError(f"materialize-int4: {e}") from None
        func = A8.int4_a8_matmul_kernel(spec, plan)
        layout = plan.layout

        def pack(consts: list[np.ndarray]) -> list[np.ndarray]:
            return A8.pack_a8(*consts, spec, plan)
    else:
        func, layout = K4.int4_matmul_kernel(spec), K4.LAYOUT

        def pack(consts: list[np.ndarray]) -> list[np.ndarray]:
            return K4.pack_panels(*consts, spec)

    built = dataclasses.replace(spec, layout=layout)
    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, built.text()), pack
