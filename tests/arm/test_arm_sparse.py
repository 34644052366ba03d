"""Block-sparse matmuls on ARM: `sparsify` takes the NEON block (4 output channels), the
vectorized BSR kernels run under qemu and equal numpy and the dense build on the same zeros."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from aarch64_tools import needs_aarch64_tools
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import bundle
from tests.sparse_models import block_sparse

pytestmark = [pytest.mark.arm, pytest.mark.slow, needs_aarch64_tools]
K, N = 64, 48


def _mlp(rows: int) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """x [rows, K] -> MatMul (70% zero 4x1 blocks) + bias, Relu -> MatMul (8x1 blocks) + bias."""
    ws = [block_sparse(K, N, 4, 0.3, seed=1), block_sparse(N, N, 8, 0.3, seed=2)]
    bs = [np.linspace(-1, 1, N, dtype=np.float32), np.linspace(1, -1, N, dtype=np.float32)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["m0"]),
        helper.make_node("Add", ["m0", "b0"], ["a0"]),
        helper.make_node("Relu", ["a0"], ["r0"]),
        helper.make_node("MatMul", ["r0", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["y"]),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in zip(("w0", "w1", "b0", "b1"), [*ws, *bs])]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, N])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), [*ws, *bs]


def _sparse_stats(art) -> dict:
    passes = art.manifest["report"]["passes"]
    return next(e["stats"] for e in passes if e["pass"] == "sparsify")


@pytest.mark.parametrize("rows", [1, 13])  # GEMV, and a row tile with invalid rows
def test_sparse_matmuls_on_arm_match_numpy_and_dense(tmp_path, rows):
    model, (w0, w1, b0, b1) = _mlp(rows)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    sparse = graphopt.compile(path, tmp_path / "sparse", target="arm")
    dense = graphopt.compile(
        path, tmp_path / "dense", target="arm", target_options={"sparse": "false"}
    )
    assert all(e["pass"] != "sparsify" for e in dense.manifest["report"]["passes"])
    stats = _sparse_stats(sparse)
    assert stats["layers_sparse"] == 2
    assert stats["weight_bytes_sparse"] < stats["weight_bytes_dense"]
    x = np.random.default_rng(rows).standard_normal((rows, K)).astype(np.float32)
    want = np.maximum(x @ w0 + b0, 0) @ w1 + b1
    got = bundle.run_emulated(sparse.directory, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got_dense = bundle.run_emulated(dense.directory, {"x": x})["y"]
    np.testing.assert_allclose(got, got_dense, rtol=1e-5, atol=1e-5)


def _pointwise_convs() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x [1, 32, 9, 9] -> 1x1 Conv (85% zeros anywhere) + Relu -> 1x1 Conv (zero 16x1 blocks)."""
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((48, 32)) * (rng.random((48, 32)) < 0.15)
    w1 = block_sparse(48, 32, 16, 0.5, seed=5).T  # [O=32, I=48]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["y"]),
    ]
    ws = [w.astype(np.float32).reshape(*w.shape, 1, 1) for w in (w0, w1)]
    graph = helper.make_graph(
        nodes,
        "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 9, 9])],
        [numpy_helper.from_array(w, n) for n, w in zip(("w0", "w1"), ws)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, ws[0].reshape(48, 32), ws[1].reshape(32, 48)


def test_sparse_pointwise_convs_on_arm(tmp_path):
    """ARM keeps convs in NCHW: 1x1 convs take the pixels-in-lanes kernel, for unstructured
    zeros (single weights) and zero blocks alike, and equal numpy under qemu."""
    model, w0, w1 = _pointwise_convs()
    path = tmp_path / "pointwise.onnx"
    onnx.save(model, path)
    sparse = graphopt.compile(path, tmp_path / "sparse", target="arm")
    stats = _sparse_stats(sparse)
    assert (
        stats["layers_sparse"] == 2 and stats["weight_bytes_sparse"] < stats["weight_bytes_dense"]
    )
    x = np.random.default_rng(0).standard_normal((1, 32, 9, 9)).astype(np.float32)
    hidden = np.maximum(np.einsum("ok,kp->op", w0, x.reshape(32, -1)), 0)
    want = np.einsum("ok,kp->op", w1, hidden).reshape(1, 32, 9, 9)
    got = bundle.run_emulated(sparse.directory, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
