"""int8 embedding tables (graphopt/compress/int8/embedding.py, through the quantize pass)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt.compress.int8.embedding import MIN_BYTES, embedding_qparams, gather_dequantized_np
from graphopt.pass_infra import make_pass
from graphopt.testing import apply_checked, constant_types, run_module

VOCAB, DIM = 1100, 256  # 1.07 MiB fp32: above MIN_BYTES


def _gather_module(table: np.ndarray, idx_shape, bind_table: bool = False) -> tvm.IRModule:
    """main(idx) = take(table, idx, axis=0) * 2; the table a constant or a variable bound to one."""
    bb = relax.BlockBuilder()
    idx = relax.Var("idx", relax.TensorType(idx_shape, "int64"))
    with bb.function("main", [idx]):
        with bb.dataflow():
            t = bb.emit(relax.const(table)) if bind_table else relax.const(table)
            rows = bb.emit(R.take(t, idx, axis=0))
            out = bb.emit_output(R.multiply(rows, relax.const(2.0, "float32")))
        bb.emit_func_output(out)
    return bb.get()


def _table(rng, vocab=VOCAB, dim=DIM):
    # rows of very different magnitudes: per-row scales must keep the small ones precise
    return (rng.standard_normal((vocab, dim)) * rng.uniform(0.01, 3, (vocab, 1))).astype(np.float32)


@pytest.mark.parametrize("bind_table", [False, True])
def test_gather_is_exact_vs_numpy_dequantized_rows(bind_table):
    rng = np.random.default_rng(0)
    table = _table(rng)
    idx = rng.integers(0, VOCAB, (2, 37)).astype(np.int64)
    idx[0, :3] = [0, VOCAB - 1, 0]  # repeated and extreme ids
    mod = _gather_module(table, idx.shape, bind_table)
    result = apply_checked(make_pass("quantize", {"mode": "dynamic"}), mod)
    assert result.modified and result.stats["embedding_tables"] == 1
    consts = constant_types(result.module)
    assert ("int8", (VOCAB, DIM)) in consts and ("float32", (VOCAB, 1)) in consts
    assert ("float32", (VOCAB, DIM)) not in consts  # the fp32 table is gone
    (got,) = run_module(result.module, [idx])
    wq, scale = embedding_qparams(table)
    np.testing.assert_array_equal(got, gather_dequantized_np(wq, scale, idx) * np.float32(2))
    # and close to the fp32 rows: at most half a step of each row's own scale
    err = np.abs(got / 2 - table[idx])
    assert (err <= scale[idx] / 2 * (1 + 1e-5)).all()


def test_qparams_per_row_symmetric():
    table = np.array([[0.0, 0.0], [1.0, -0.5], [-254.0, 127.0]], np.float32)
    wq, scale = embedding_qparams(table)
    np.testing.assert_array_equal(scale.ravel(), np.float32([1.0, 1 / 127, 2.0]))
    np.testing.assert_array_equal(wq, [[0, 0], [127, -64], [-127, 64]])  # -63.5 -> -64 (even)


def test_small_table_is_left_fp32():
    rng = np.random.default_rng(1)
    table = _table(rng, vocab=64, dim=DIM)  # 64 KiB < MIN_BYTES
    assert table.nbytes < MIN_BYTES
    mod = _gather_module(table, (1, 5))
    result = apply_checked(make_pass("quantize", {"mode": "dynamic"}), mod)
    assert not result.modified and "embedding_tables" not in result.stats


def test_option_turns_it_off():
    table = _table(np.random.default_rng(2))
    mod = _gather_module(table, (1, 5))
    pass_ = make_pass("quantize", {"mode": "dynamic", "embeddings": "false"})
    result = apply_checked(pass_, mod)
    assert not result.modified
    assert ("float32", (VOCAB, DIM)) in constant_types(result.module)


@pytest.mark.slow
def test_minilm_int8_weights_and_cosine(tmp_path):
    """all-MiniLM-L6-v2, dynamic per-row int8: the word-embedding table is int8 in the
    artifact, its weights are <= 0.27x of fp32 and embeddings keep cosine >= 0.99."""
    pytest.importorskip("torch", reason="bench extras not installed (make test-slow)")
    import onnx

    import graphopt
    from bench.bench_int8 import CALIB_SENTENCES
    from bench.models.export import export
    from bench.models.inputs import sentence_batch, tokenize
    from graphopt.compress.int8.flow import QuantOptions
    from graphopt.reference import ort_run, ort_session
    from graphopt.sizes import library_weights

    path = export("minilm")
    cal = [tokenize(s) for s in CALIB_SENTENCES[:2]]
    np.savez(tmp_path / "c.npz", **{k: np.concatenate([c[k] for c in cal]) for k in cal[0]})
    quant = QuantOptions(
        str(tmp_path / "c.npz"), mode="dynamic", granularity="row", sensitivity=False
    )
    art = graphopt.compile(path, tmp_path / "int8", quantization=quant)
    weights = library_weights(art.library_path)
    assert any(c.describe() == "int8[30522, 384]" for c in weights.constants)
    assert not any(c.describe() == "float32[30522, 384]" for c in weights.constants)
    fp32_params = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    assert weights.weight_bytes <= 0.27 * 4 * fp32_params
    ref, out = ort_session(path), art.outputs[0].name
    for feed in sentence_batch(4):
        a = ort_run(ref, feed)[out].ravel().astype(np.float64)
        b = art.run(feed)[out].ravel().astype(np.float64)
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.99
