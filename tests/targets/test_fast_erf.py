"""fast-erf: fp32 erf / GELU legalized to a vectorizable polynomial, accurate to 5e-7."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import relax

from graphopt.pass_infra import make_pass
from graphopt.target_infra import make_target
from graphopt.testing import apply_checked, run_through_target, single_input_module

HOST = make_target("x86")


def _module(op, dtype="float32", n=4096):
    return single_input_module((n,), lambda bb, x: op(x), dtype)


def _calls(mod, name):
    from graphopt import _tvm

    return sum(
        1 for c in _tvm.iter_relax_calls(mod) if isinstance(c.op, tvm.ir.Op) and c.op.name == name
    )


@pytest.mark.parametrize(
    "op,ref,tol",
    [
        (relax.op.erf, math.erf, 5e-7),
        # GELU adds the rounding of its own fp32 products (libm's erff gives 3e-7 here).
        (relax.op.nn.gelu, lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))), 1e-6),
    ],
)
def test_erf_and_gelu_become_tir_calls_close_to_libm(op, ref, tol):
    mod = _module(op)
    result = apply_checked(make_pass("fast-erf"), mod)
    assert result.modified and result.stats["fast_erf"] == 1
    assert _calls(result.module, "relax.call_tir") == 1
    assert _calls(result.module, "relax.erf") + _calls(result.module, "relax.nn.gelu") == 0
    x = np.linspace(-8, 8, 4096).astype("float32")
    got = run_through_target(mod, x).astype(np.float64)  # the x86 legalize stage runs fast-erf
    want = np.array([ref(float(v)) for v in x])
    err = np.abs(got - want) / np.maximum(np.abs(want), 1.0)
    assert err.max() < tol, err.max()


def test_other_dtypes_and_ops_are_left_to_legalize_ops():
    for mod in (_module(relax.op.erf, "float16"), _module(relax.op.sigmoid)):
        result = apply_checked(make_pass("fast-erf"), mod)
        assert not result.modified and result.stats["fast_erf"] == 0
        assert result.module.same_as(mod)


def test_x86_option_turns_it_off():
    assert "fast-erf" in HOST.stages()["legalize"]
    off = make_target("x86", {"fast_erf": "false"})
    assert "fast-erf" not in off.stages()["legalize"]
    assert "tvm.LegalizeOps" in off.stages()["legalize"]
