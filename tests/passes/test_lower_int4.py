"""lower-int4: matmuls with constant weights and large embedding tables -> int4."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt.compress.int4.quant import quantize_rtn
from graphopt.compress.int4.store import save_weights
from graphopt.errors import PipelineError
from graphopt.int4_ops import Int4MatmulSpec, reference_matmul
from graphopt.pass_infra import make_pass
from graphopt.testing import apply_checked, check_no_change, constant_types, run_module

K, N, VOCAB, DIM = 70, 24, 1100, 256  # K: two whole groups of 32 and a tail of 6


def _module(w: np.ndarray, table: np.ndarray | None = None) -> tvm.IRModule:
    """main(x[, idx]) = x @ w (+ sum of the gathered rows)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, w.shape[0]), "float32"))
    params = [x]
    if table is not None:
        params.append(relax.Var("idx", relax.TensorType((1, 3), "int64")))
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit(R.matmul(x, relax.const(w)))
            if table is not None:
                rows = bb.emit(R.take(relax.const(table), params[1], axis=0))
                y = bb.emit(R.add(y, R.sum(rows, axis=-1, keepdims=True)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_is_the_int4_op_of_the_rounded_weight(symmetric):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    mod = _module(w)
    opts = {"group": "32", "symmetric": str(symmetric).lower()}
    result = apply_checked(make_pass("lower-int4", opts), mod)
    assert result.stats["int4_matmuls"] == 1
    consts = constant_types(result.module)
    assert ("uint8", (N, K // 2)) in consts and ("float32", (N, 3)) in consts
    assert ("float32", (K, N)) not in consts  # the fp32 weight left the graph
    assert (("uint8", (N, 3)) in consts) == (not symmetric)
    x = rng.standard_normal((1, 3, K)).astype(np.float32)
    got = run_module(result.module, [x])[0]
    q = quantize_rtn(w, 32, symmetric)
    zeros = np.zeros(1, np.uint8) if symmetric else q.zeros
    spec = Int4MatmulSpec((1, 3, K), N, 32, symmetric)
    np.testing.assert_array_equal(got, reference_matmul(x, q.packed, q.scales, zeros, spec))
    np.testing.assert_allclose(got, x @ q.dequantize(), rtol=1e-5, atol=1e-4)


def test_weights_file_is_used_and_checked(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((K, N)).astype(np.float32)
    mine = quantize_rtn(w * 0 + 1.0, 32, True)  # all ones: not what rounding w gives
    save_weights(tmp_path / "w.npz", {"matmul_0": mine})
    lower = make_pass("lower-int4", {"weights": str(tmp_path / "w.npz")})
    result = apply_checked(lower, _module(w))
    x = rng.standard_normal((1, 3, K)).astype(np.float32)
    np.testing.assert_allclose(run_module(result.module, [x])[0], x @ mine.dequantize(), rtol=1e-5)
    save_weights(tmp_path / "bad.npz", {"matmul_0": quantize_rtn(w[:64], 32, True)})
    with pytest.raises(PipelineError, match="K=64"):
        make_pass("lower-int4", {"weights": str(tmp_path / "bad.npz")}).run(_module(w))


def test_skip_keeps_the_layer_fp32():
    w = np.ones((K, N), np.float32)
    check_no_change(make_pass("lower-int4", {"skip": "matmul_0"}), _module(w))


@pytest.mark.parametrize("symmetric", [True, False])
def test_embedding_rows_are_int4_and_exact_vs_numpy(symmetric):
    rng = np.random.default_rng(2)
    w = np.zeros((K, N), np.float32)
    table = (rng.standard_normal((VOCAB, DIM)) * rng.uniform(0.01, 3, (VOCAB, 1))).astype(
        np.float32
    )
    mod = _module(w, table)
    opts = {"group": "64", "symmetric": str(symmetric).lower()}
    result = apply_checked(make_pass("lower-int4", opts), mod)
    assert result.stats["int4_embeddings"] == 1
    consts = constant_types(result.module)
    assert ("uint8", (VOCAB, DIM // 2)) in consts
    assert ("float32", (VOCAB, DIM)) not in consts
    groups = DIM // 64  # scales fp32, zero points uint8 (asymmetric), one a group of a row
    assert ("float32", (VOCAB, groups, 1)) in consts
    assert (("uint8", (VOCAB, groups, 1)) in consts) == (not symmetric)
    x = np.zeros((1, 3, K), np.float32)
    idx = np.array([[0, VOCAB - 1, 7]], np.int64)
    got = run_module(result.module, [x, idx])[0]
    deq = quantize_rtn(table.T, 64, symmetric).dequantize().T  # [V, D]
    want = deq[idx].sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(got[..., :1], want, rtol=1e-5, atol=1e-4)


def test_rejects_odd_group():
    with pytest.raises(PipelineError, match="even"):
        make_pass("lower-int4", {"group": "33"}).run(_module(np.ones((K, N), np.float32)))


def test_fp16_scales_halve_the_scale_bytes():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((K, N)).astype(np.float32)
    result = apply_checked(make_pass("lower-int4", {"scale_dtype": "float16"}), _module(w))
    assert ("float16", (N, 3)) in constant_types(result.module)
    x = rng.standard_normal((1, 3, K)).astype(np.float32)
    q = quantize_rtn(w, 32, True, scale_dtype="float16")
    np.testing.assert_allclose(
        run_module(result.module, [x])[0], x @ q.dequantize(), rtol=1e-5, atol=1e-4
    )


def test_embedding_group_of_its_own():
    rng = np.random.default_rng(4)
    table = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    mod = _module(np.zeros((K, N), np.float32), table)
    opts = {"group": "32", "embedding_group": "128", "scale_dtype": "float16"}
    consts = constant_types(apply_checked(make_pass("lower-int4", opts), mod).module)
    assert ("float16", (VOCAB, DIM // 128, 1)) in consts  # the table's scales
    assert ("float16", (N, 3)) in consts  # the matmul's: group 32
