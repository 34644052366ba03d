"""Small Relax modules for the kernel tests of the compression passes."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R


def matmul_add_module(w: np.ndarray, rows: int) -> tvm.IRModule:
    """main(x [1, rows, K]) = x @ w + 1: one constant-weight matmul with an epilogue."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, rows, w.shape[0]), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.matmul(x, relax.const(w)))
            out = bb.emit_output(R.add(y, relax.const(np.float32(1))))
        bb.emit_func_output(out)
    return bb.get()
