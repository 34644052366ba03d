"""fast-softmax: fp32 softmax legalized with a vectorizable exp, close to numpy's softmax."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_infra import make_pass
from graphopt.target_infra import make_target
from graphopt.testing import apply_checked, run_through_target, single_input_module


def _softmax_module(shape, axis=-1, dtype="float32"):
    return single_input_module(shape, lambda bb, x: relax.op.nn.softmax(x, axis=axis), dtype)


def _count(mod, name):
    return sum(
        1 for c in _tvm.iter_relax_calls(mod) if isinstance(c.op, tvm.ir.Op) and c.op.name == name
    )


def _reference(x, axis):
    e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("shape,axis", [((2, 12, 7, 129), -1), ((3, 17, 5), 1), ((1, 1000), -1)])
def test_softmax_becomes_one_kernel_close_to_numpy(shape, axis):
    mod = _softmax_module(shape, axis)
    result = apply_checked(make_pass("fast-softmax"), mod)
    assert result.modified and result.stats["fast_softmax"] == 1
    assert _count(result.module, "relax.nn.softmax") == 0
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 8).astype("float32")
    x.flat[::11] = -1e30  # masked scores: exp underflows to (almost) 0
    got = run_through_target(mod, x)  # the x86 legalize stage runs fast-softmax
    want = _reference(x, axis)
    # libm's expf path (fast_softmax=false) measures the same: 4.0e-7 abs, 2.4e-6 relative.
    assert np.abs(got - want).max() < 1e-6
    visible = want > 1e-30
    assert (np.abs(got - want)[visible] / want[visible]).max() < 5e-6
    np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=1e-6)


def test_all_minus_inf_row_is_nan_as_in_onnx():
    x = np.full((2, 5), -np.inf, dtype="float32")
    x[1, 2] = 0.0
    got = run_through_target(_softmax_module((2, 5)), x)
    assert np.isnan(got[0]).all()
    np.testing.assert_array_equal(got[1], [0, 0, 1, 0, 0])


def test_other_dtypes_and_ops_are_left_to_legalize_ops():
    for mod in (
        _softmax_module((4, 8), dtype="float16"),
        single_input_module((4, 8), lambda bb, x: relax.op.exp(x)),
    ):
        result = apply_checked(make_pass("fast-softmax"), mod)
        assert not result.modified and result.stats["fast_softmax"] == 0
        assert result.module.same_as(mod)


def test_x86_option_turns_it_off():
    assert "fast-softmax" in make_target("x86").stages()["legalize"]
    off = make_target("x86", {"fast_softmax": "false"}).stages()["legalize"]
    assert "fast-softmax" not in off and "fast-erf" in off
