"""Whether a model's convs are sparse enough to stay NCHW on a CPU (the `layout` pass's
`sparse_nchw_density`).

In NHWC a 1x1 conv is a matmul over channels, and only zeros in blocks of output channels make
it faster (`sparsify`'s block-sparse kernels). In NCHW the pixels are the SIMD lanes and each
weight is a scalar, so single zeros pay too (`targets/cpu/sparse/nchw.py`), but every dense
conv there is slower than in NHWC. So NCHW is the better layout only when nearly all of the
model's work is 1x1 convs whose zeros are scattered and very many. Measured on MobileNetV2
with its 1x1 convs pruned unstructured (docs/SPARSITY.md): at 90% zeros the NCHW build took
0.80x the NHWC one's time, at 80% 1.16x; the break-even lies near 85%.
"""

from __future__ import annotations

import numpy as np
import tvm

from graphopt.binding_graph import shape_dims
from graphopt.compress.common.layers import find_layers
from graphopt.sparse_ops import block_density

SHARE = 2 / 3  # of the convs' multiply-adds in such 1x1 convs


def sparse_nchw_pays(mod: tvm.IRModule, density: float, block: int, block_density_max: float):
    """True when 1x1 convs whose weights hold at most `density` nonzeros, and whose zeros are
    not in the `block`-channel blocks NHWC's kernels take (block density above
    `block_density_max`), do at least SHARE of the convs' multiply-adds (static shapes)."""
    total, scattered = 0, 0
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.relax.Function)]
    for layer in (ly for func in funcs for ly in find_layers(func)):
        if layer.kind != "conv2d":
            continue
        out = shape_dims(layer.var)
        if out is None or not all(isinstance(d, int) for d in out):
            return False
        w = layer.weight
        macs = int(np.prod(out)) * int(np.prod(w.shape[1:]))
        total += macs
        if w.shape[2:] == (1, 1) and int(layer.call.attrs.groups) == 1:
            matrix = w[:, :, 0, 0].T  # [C, O]: blocks along the output channels
            sparse = np.count_nonzero(matrix) <= density * matrix.size
            if sparse and block_density(matrix, block) > block_density_max:
                scattered += macs
    return total > 0 and scattered >= SHARE * total
