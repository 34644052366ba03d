"""The size a symbolic dim is planned at: a batch dim (only ever a buffer's leading dim) at 1,
a sequence length at min(upper bound, 128)."""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from graphopt.targets.cpu.schedules import replay


def _add_func(shape_a, shape_b) -> tirx.PrimFunc:
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(shape_a, "float32"))
    b = relax.Var("b", relax.TensorType(shape_b, "float32"))
    with bb.function("main", [a, b]):
        bb.emit_func_output(bb.emit_te(tvm.topi.add, a, b))
    (func,) = [f for f in bb.get().functions.values() if isinstance(f, tirx.PrimFunc)]
    return func


def test_leading_only_dim_is_a_batch_planned_at_one():
    n = tirx.Var("n", "int64")
    func = _add_func([n, 8], [n, 8])
    assert replay.batch_dims(func) == {"n"}
    assert replay.nominal_sizes(func, {"n": 8}) == {"n": 1}


def test_sequence_dim_is_planned_at_a_typical_length():
    n = tirx.Var("n", "int64")
    func = _add_func([1, n, 8], [1, n, 8])
    assert replay.batch_dims(func) == set()
    assert replay.nominal_sizes(func, {"n": 512}) == {"n": 128}
    assert replay.nominal_sizes(func, {"n": 64}) == {"n": 64}


def test_dim_both_leading_and_inside_is_no_batch():
    n = tirx.Var("n", "int64")
    func = _add_func([n, n], [n, n])
    assert replay.batch_dims(func) == set()
