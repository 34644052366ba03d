"""Softmax rows: vectorized max / exp / sum with the tail peeled, rows in parallel
(targets/cpu/schedules/rows.py), exact at every length, tails included, static or symbolic."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from graphopt import _tvm
from graphopt.targets.cpu.schedules import common, rows, schedule_func


def _softmax_func(n, heads: int = 3) -> tirx.PrimFunc:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, heads, n, n], "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit_te(tvm.topi.nn.softmax, x, axis=-1))
    (func,) = [f for f in bb.get().functions.values() if isinstance(f, tirx.PrimFunc)]
    return func.with_attr("global_symbol", "main")


def _target():
    return _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name(), "num-cores": 2})


def _info():
    return common.cpu_info(_target())


def _run(func: tirx.PrimFunc, x: np.ndarray) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target=_target())
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def _reference(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_rows_are_vectorized_and_parallel():
    sch = rows.schedule_rows(_softmax_func(tirx.Var("n", "int64")), _info())
    assert sch is not None
    text = sch.mod["main"].script()
    assert text.count("T.parallel(") == 1  # the merged row loop, nothing inside it
    assert text.count("_rf") >= 2  # max and sum in lane partials
    assert text.count("T.vectorized(") >= 5  # two partials, their inits, exp and the output


@pytest.mark.parametrize("n", [1, 5, 8, 37, 130])
def test_symbolic_softmax_exact_at_every_length(n):
    sch = rows.schedule_rows(_softmax_func(tirx.Var("n", "int64")), _info())
    x = np.random.default_rng(n).standard_normal((1, 3, n, n)).astype(np.float32) * 4
    x[..., -1] = 30.0  # the row max in the peeled tail: a partial vector must still see it
    np.testing.assert_allclose(_run(sch.mod["main"], x), _reference(x), rtol=1e-5, atol=1e-7)


def test_short_rows_are_left_to_the_other_schedules():
    assert rows.schedule_rows(_softmax_func(_info().lanes), _info()) is None


@pytest.mark.parametrize("vectors", [2, 130 / 16])
def test_static_rows_exact(vectors):
    """Static rows take the same schedule (dlight's Reduction keeps max and sum scalar): two
    SIMD vectors (16 keys with AVX2, 32 with AVX-512) and a row with a tail."""
    n = int(vectors * _info().lanes)
    sch = rows.schedule_rows(_softmax_func(n), _info())
    assert sch is not None and "_rf" in sch.mod["main"].script()
    x = np.random.default_rng(n).standard_normal((1, 3, n, n)).astype(np.float32) * 4
    np.testing.assert_allclose(_run(sch.mod["main"], x), _reference(x), rtol=1e-5, atol=1e-7)


def test_layer_norm_rows_inline_the_per_row_mean():
    """Layer norm's mean (sum / n) is read by the variance and the output: inlined into both,
    the kernel is a row kernel (sums in SIMD lanes), on one thread when small."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 24, 96], "float32"))
    g = relax.Var("g", relax.TensorType([96], "float32"))
    b = relax.Var("b", relax.TensorType([96], "float32"))
    with bb.function("main", [x, g, b]):
        bb.emit_func_output(bb.emit(relax.op.nn.layer_norm(x, g, b, axes=[-1])))
    mod = relax.transform.LegalizeOps()(bb.get())
    (func,) = [f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc)]
    sch = rows.schedule_rows(func.with_attr("global_symbol", "main"), _info(), parallel=False)
    assert sch is not None and "_rf" in sch.mod["main"].script()
    assert "T.parallel" not in sch.mod["main"].script()
    rng = np.random.default_rng(2)
    xs, gs, bs = (rng.standard_normal(s).astype(np.float32) for s in ((1, 24, 96), 96, 96))
    lib = tvm.tirx.build(sch.mod, target=_target())
    out = tvm.runtime.tensor(np.zeros((1, 24, 96), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (xs, gs, bs)), out)
    mean, var = xs.mean(-1, keepdims=True), xs.var(-1, keepdims=True)
    want = (xs - mean) / np.sqrt(var + 1e-5) * gs + bs
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def test_symbolic_build_goes_through_the_vectorized_rows():
    """The registry picks it for a symbolic softmax (the reduction rule's symbolic path)."""
    func = _softmax_func(tirx.Var("n", "int64"))
    outcome = schedule_func(func, _info(), _target(), upper_bounds={"n": 512})
    assert outcome.rule == "reduction"
    assert "_rf" in outcome.func.script()
    x = np.random.default_rng(0).standard_normal((1, 3, 45, 45)).astype(np.float32)
    np.testing.assert_allclose(_run(outcome.func, x), _reference(x), rtol=1e-5, atol=1e-7)
