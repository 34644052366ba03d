"""The CPU int4-weight matmul kernel (targets/cpu/int4) alone, against numpy, and its stage."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from graphopt import _tvm
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.int4_ops import Int4MatmulSpec, reference_matmul, spec_of
from graphopt.pass_infra import make_pass
from graphopt.targets.cpu.int4 import kernels as K4
from graphopt.testing import apply_checked, run_through_target
from tests.relax_builders import matmul_add_module

HOST_FMA = "fma" in _tvm.host_cpu_features()
pytestmark = pytest.mark.skipif(not HOST_FMA, reason="the kernel's numpy model assumes FMA")

CASES = {
    # name: (x shape, N, group, symmetric)
    "gemv_odd_k_tail_group": ((1, 37), 5, 32, True),
    "gemv_asym_group_tail": ((1, 1, 130), 40, 64, False),
    "rows_3_asym_odd_k": ((1, 3, 71), 24, 32, False),
    "rows_9_two_tiles_and_a_row": ((9, 129), 33, 128, True),
    "rows_4_whole_panels": ((4, 64), 32, 32, False),
    "gemv_fp16_scales": ((1, 100), 24, 32, True),
    "rows_5_fp16_scales_asym": ((5, 96), 17, 64, False),
}


def _build(func):
    target = tvm.target.Target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=target)


def _weights(rng, spec: Int4MatmulSpec):
    w = rng.standard_normal((spec.k, spec.n)).astype(np.float32)
    q = quantize_rtn(w, spec.group, spec.symmetric, scale_dtype=spec.scale_dtype)
    assert q.scales.dtype == np.dtype(spec.scale_dtype)
    return q.packed, q.scales, (np.zeros(1, np.uint8) if spec.symmetric else q.zeros)


def _run(spec: Int4MatmulSpec, x, natural) -> np.ndarray:
    lib = _build(K4.int4_matmul_kernel(spec))
    consts = K4.pack_panels(*natural, spec)
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in consts), out)
    return out.numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_bit_exact_vs_numpy(case):
    shape, n, group, sym = CASES[case]
    spec = Int4MatmulSpec(
        shape, n, group, sym, scale_dtype="float16" if "fp16" in case else "float32"
    )
    rng = np.random.default_rng(len(case))
    natural = _weights(rng, spec)
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_run(spec, x, natural), reference_matmul(x, *natural, spec))


def test_kernel_exact_on_integer_data_whatever_the_rounding():
    """Integer activations and power-of-two scales: every sum is exact, so any unpacking,
    group or panel mistake shows as a wrong integer."""
    spec = Int4MatmulSpec((5, 99), 19, 32, False)
    rng = np.random.default_rng(9)
    q = rng.integers(0, 16, (19, 99)).astype(np.uint8)
    from graphopt.compress.int4.quant import pack_nibbles

    scales = (2.0 ** rng.integers(-2, 3, (19, 4))).astype(np.float32)
    zeros = rng.integers(0, 16, (19, 4)).astype(np.uint8)
    x = rng.integers(-8, 9, (5, 99)).astype(np.float32)
    w = (q.astype(np.float32) - np.repeat(zeros, 32, 1)[:, :99]) * np.repeat(scales, 32, 1)[:, :99]
    got = _run(spec, x, (pack_nibbles(q), scales, zeros))
    np.testing.assert_array_equal(got, x @ w.T)


def test_panels_hold_two_weights_per_byte():
    spec = Int4MatmulSpec((1, 64), 40, 32, True)
    natural = _weights(np.random.default_rng(0), spec)
    wp, sp, _ = K4.pack_panels(*natural, spec)
    assert wp.dtype == np.uint8 and wp.shape == (3, 64, 8)  # ceil(40 / 16) panels
    assert sp.shape == (3, 2, 16)


@pytest.mark.parametrize("rows", [1, 6])
def test_stage_replaces_the_portable_kernel(rows):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((70, 20)).astype(np.float32)
    lowered = apply_checked(
        make_pass("lower-int4", {"symmetric": "false"}), matmul_add_module(w, rows)
    )
    result = make_pass("materialize-int4").run(lowered.module)
    assert result.stats == {"kernels": 1, "calls": 1}
    specs = [spec_of(f) for f in result.module.functions.values()]
    assert [s.layout for s in specs if s is not None] == [K4.LAYOUT]
    x = rng.standard_normal((1, rows, 70)).astype(np.float32)
    got = run_through_target(lowered.module, x)  # the x86 stages materialize it themselves
    q = quantize_rtn(w, 32, False)
    spec = Int4MatmulSpec((1, rows, 70), 20, 32, False)
    want = reference_matmul(x, q.packed, q.scales, q.zeros, spec) + np.float32(1)
    np.testing.assert_array_equal(got, want)
    again = make_pass("materialize-int4").run(result.module)  # built kernels are kept
    assert not again.modified


def test_cpu_targets_schedule_int4_kernels():
    from graphopt.target_infra import make_target

    for name in ("x86", "arm"):
        assert "materialize-int4" in make_target(name).stages()["schedule"]
