"""When a CPU layer takes the block-sparse kernel: block size and break-even density.

The block is one SIMD register of output channels (8 fp32 lanes on AVX2, 16 on AVX-512, 4 on
NEON), so each nonzero block is one broadcast and one FMA per row. The threshold is the
measured break-even of the block-sparse kernel against the dense (schedule-cpu) kernel on
MobileNetV2's 1x1 convs and MiniLM's matmuls (bench/bench_prune.py, docs/SPARSITY.md), with
a margin: a layer goes sparse when at most this fraction of its blocks is nonzero.
"""

from __future__ import annotations

import tvm

from graphopt import _tvm
from graphopt.targets.cpu.schedules.common import cpu_info

MAX_DENSITY = 0.6
# Layers with fewer input channels stay dense: MobileNetV2's 112x112 16->96 and 56x56 24->144
# expansions ran no faster sparse even at 90% (writing the output bounds them).
MIN_K = 64


def current_target() -> tvm.target.Target:
    """The target of the surrounding `with target:`, else this host."""
    current = tvm.target.Target.current(allow_none=True)
    if current is not None:
        return current
    return _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})


def sparsify_item(target: tvm.target.Target) -> str:
    """The `sparsify` pipeline item for `target` (its block size and threshold)."""
    info = cpu_info(target)
    lanes = info.lanes if info is not None else 4
    return f"sparsify{{block={lanes},max_density={MAX_DENSITY},min_k={MIN_K}}}"
