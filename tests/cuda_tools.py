"""Skip markers and small kernels for the CUDA compile tests: they need nvcc and gcc, never
a GPU."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import tvm_ffi
from onnx import TensorProto, helper
from tvm import relax, tirx

needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None or shutil.which("gcc") is None,
    reason="needs nvcc (CUDA toolkit) and gcc: the CUDA target compiles kernels ahead of time",
)


def serial(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Thread-bound loops become serial loops (exact for schedules without shared memory)."""

    def visit(loop: tirx.For) -> tirx.For:
        if loop.thread_binding is None:
            return loop
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL, loop.body)

    return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.For, visit)]))


def matmul_kernel() -> tirx.PrimFunc:
    """The legalized kernel of a [64, 96] x [96, 32] fp32 matmul (dlight's matmul rule)."""
    from graphopt.targets.cuda.target import Cuda

    a = relax.Var("a", relax.TensorType((64, 96), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [a]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(a, relax.const(np.ones((96, 32), "float32"))))
        bb.emit_func_output(out)
    with Cuda().tvm_target():
        legal = relax.transform.LegalizeOps()(bb.get())
    return next(f for f in legal.functions.values() if isinstance(f, tirx.PrimFunc))


def big_matmul(path) -> str:
    """x[128, 256] @ w[256, 192] + b: every dimension above dlight's tensor-core threshold."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [256, 192], rng.normal(0, 0.05, (256, 192)))
    b = helper.make_tensor("b", TensorProto.FLOAT, [192], rng.normal(0, 0.1, 192))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "big_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 192])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return str(path)
