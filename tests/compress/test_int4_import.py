"""Import of com.microsoft MatMulNBits (onnxruntime's int4 format) onto the int4 op."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import _tvm
from graphopt.errors import GraphoptError
from graphopt.frontend import import_onnx

ort_quant = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")


def _matmul(k: int, n: int, seed: int):
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _nbits(k: int, n: int, block: int, symmetric: bool, seed: int = 0):
    q = ort_quant.MatMulNBitsQuantizer(
        _matmul(k, n, seed), block_size=block, is_symmetric=symmetric, accuracy_level=0
    )
    q.process()
    return q.model.model


@pytest.mark.parametrize(
    "k,n,block,symmetric", [(96, 40, 32, True), (70, 24, 32, False), (256, 20, 64, True)]
)
def test_matches_onnxruntime(tmp_path, k, n, block, symmetric):
    from graphopt.reference import ort_run, ort_session

    model = _nbits(k, n, block, symmetric)
    assert [nd.op_type for nd in model.graph.node] == ["MatMulNBits"]
    x = np.random.default_rng(1).standard_normal((1, 3, k)).astype(np.float32)
    want = ort_run(ort_session(model.SerializeToString()), {"x": x})["y"]
    got = graphopt.compile(model, tmp_path / "out").run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weights_recovered_exactly():
    model = _nbits(70, 24, 32, False)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    b = next(v for name, v in init.items() if v.dtype == np.uint8 and v.ndim == 3)
    consts = []

    def visit(e):
        if _tvm.is_constant(e):
            consts.append(_tvm.constant_value(e))

    from tvm import relax

    relax.analysis.post_order_visit(import_onnx(model).mod["main"], visit)
    packed = next(c for c in consts if c.dtype == np.uint8 and c.shape == (24, 35))
    np.testing.assert_array_equal(packed, b.reshape(24, -1)[:, :35])


def test_other_bits_are_refused(tmp_path):
    model = _nbits(64, 16, 32, True)
    node = model.graph.node[0]
    for a in node.attribute:
        if a.name == "bits":
            a.i = 8
    with pytest.raises(GraphoptError, match="bits=8"):
        graphopt.compile(model, tmp_path / "out")


def _blocked_dq(k: int, n: int, block: int, dtype: int, with_zp: bool, seed: int = 0):
    """x @ DequantizeLinear(W4 [K, N], scale [blocks, N][, zp], axis=0, block_size) (opset 21)."""
    rng = np.random.default_rng(seed)
    lo, hi = (-8, 8) if dtype == TensorProto.INT4 else (0, 16)
    blocks = -(-k // block)
    q = rng.integers(lo, hi, (k, n))
    s = rng.uniform(0.01, 0.1, (blocks, n)).astype(np.float32)
    inits = [
        helper.make_tensor("wq", dtype, [k, n], q.flatten().tolist()),
        numpy_helper.from_array(s, "ws"),
    ]
    inputs = ["wq", "ws"]
    if with_zp:
        z = rng.integers(lo, hi, (blocks, n))
        inits.append(helper.make_tensor("wz", dtype, [blocks, n], z.flatten().tolist()))
        inputs.append("wz")
    nodes = [
        helper.make_node("DequantizeLinear", inputs, ["w"], axis=0, block_size=block),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dq4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize(
    "k,dtype,with_zp",
    [
        (64, TensorProto.INT4, True),
        (64, TensorProto.INT4, False),
        (70, TensorProto.UINT4, False),
        (96, TensorProto.UINT4, True),
    ],
)
def test_blocked_int4_dequantize_linear_matches_onnxruntime(tmp_path, k, dtype, with_zp):
    from graphopt.reference import ort_run, ort_session

    model = _blocked_dq(k, 24, 32, dtype, with_zp)
    x = np.random.default_rng(2).standard_normal((1, 3, k)).astype(np.float32)
    # onnxruntime's optimizations fuse the pair into its own lossy int4 kernel: unfused it is
    # the ONNX definition
    want = ort_run(ort_session(model.SerializeToString(), optimize=False), {"x": x})["y"]
    consts = []

    def visit(e):
        if _tvm.is_constant(e):
            consts.append(_tvm.constant_value(e))

    from tvm import relax

    relax.analysis.post_order_visit(
        import_onnx(_blocked_dq(k, 24, 32, dtype, with_zp)).mod["main"], visit
    )
    assert any(c.dtype == np.uint8 and c.shape == (24, (k + 1) // 2) for c in consts)
    assert not any(c.dtype == np.float32 and c.shape == (k, 24) for c in consts)
    got = graphopt.compile(model, tmp_path / "out").run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
