"""When a CPU layer takes the block-sparse kernel: block size and break-even density.

The block is one SIMD register of output channels (8 fp32 lanes on AVX2, 16 on AVX-512, 4 on
NEON), so each nonzero block is one broadcast and one FMA per row. A layer goes sparse when at
most MAX_DENSITY of its blocks are nonzero. Measured on znver3 (one thread, CPU time; speed-up
of the sparse kernel over schedule-cpu's dense one at 40 / 50 / 60 / 70% nonzero blocks):

    MobileNetV2 112x112 16->96     1.13  1.18  0.85  0.76
    MobileNetV2 28x28 192->32      1.80  1.44  1.29  0.72
    MobileNetV2 7x7 320->1280      2.17  1.90  1.03  1.49
    MiniLM 128x384->1536           1.92  1.89  1.43  0.86
    MobileNetV2 classifier (GEMV)  3.50  3.52  3.02  1.89

Break-even lies between 55% and 70%; at 50% every layer measured gains. Where the zeros come in
blocks of two registers (16x1 on AVX2), the wide block is taken: one broadcast feeds two FMAs.

NCHW 1x1 convs (ARM; x86 with layout=NCHW) take the pixels-in-lanes kernel (sparse/nchw.py),
which skips any zero pattern; the smaller the block of output channels, the less each input
load is reused. Measured on Zen 4 (AVX-512, 2 threads, x86 layout=NCHW, against the dense
NCHW conv), speed-up at the block's density of nonzeros:

    layer                   8 @ 0.6  4 @ 0.5  2 @ 0.3  1 @ 0.3  1 @ 0.2  1 @ 0.1
    56x56 24->144                                      3.66     4.53     5.83
    28x28 192->32            1.70     2.11     2.98     1.69     2.51     4.49
    14x14 384->64            1.45     1.48     1.56     0.92     1.33     1.82
    7x7 960->160             1.37     1.07     1.34     0.65     1.01     2.00
    7x7 320->1280            1.22     1.06     1.87     0.83     1.24     2.54

so a block of 8 channels pays at 60% nonzero, 4 at 50%, 2 at 30% and single weights
(unstructured zeros) at 20%: NCHW_DENSITIES.
"""

from __future__ import annotations

import tvm

from graphopt import _tvm
from graphopt.targets.cpu.schedules.common import cpu_info

MAX_DENSITY = 0.5
NCHW_DENSITIES = "8:0.6/4:0.5/2:0.3/1:0.2"
# A whole model stays NCHW when its 1x1 convs hold at most this fraction of nonzero weights,
# scattered (passes/_sparse_layout.py): MobileNetV2 ran 0.80x NHWC's time at 10% nonzero,
# 1.16x at 20%; 0.12 keeps to the side measured to pay.
NCHW_MODEL_DENSITY = 0.12


def current_target() -> tvm.target.Target:
    """The target of the surrounding `with target:`, else this host."""
    current = tvm.target.Target.current(allow_none=True)
    if current is not None:
        return current
    return _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})


def layout_item(target: tvm.target.Target) -> str:
    """The `layout` pipeline item for `target`: NHWC, unless the model's 1x1 convs are
    nearly all scattered zeros (its NHWC block size and threshold, as `sparsify`'s)."""
    info = cpu_info(target)
    lanes = info.lanes if info is not None else 4
    return (
        f"layout{{sparse_nchw_density={NCHW_MODEL_DENSITY},sparse_block={lanes},"
        f"sparse_block_density={MAX_DENSITY}}}"
    )


def sparsify_item(target: tvm.target.Target) -> str:
    """The `sparsify` pipeline item for `target` (its block size and threshold)."""
    info = cpu_info(target)
    lanes = info.lanes if info is not None else 4
    return (
        f"sparsify{{block={lanes},wide_block={2 * lanes},max_density={MAX_DENSITY},"
        f"nchw_densities={NCHW_DENSITIES}}}"
    )
