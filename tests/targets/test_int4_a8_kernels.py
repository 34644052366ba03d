"""The W4A8 CPU kernels (targets/cpu/int4/a8_kernels.py) against the numpy model of the op
(graphopt.int4_a8_ops), bit for bit; their dot instructions in the generated assembly; the
stage that builds them."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from graphopt import _tvm
from graphopt.compress.int4.quant import pack_nibbles, quantize_rtn
from graphopt.int4_a8_ops import (
    fake_quant_rows,
    quantize_rows,
    reference_a8_matmul,
)
from graphopt.int4_ops import Int4MatmulSpec, dequantized_weight, portable_kernel, spec_of
from graphopt.pass_infra import make_pass
from graphopt.targets.cpu.int4 import a8_kernels as A8
from graphopt.targets.cpu.int8 import kernels as K8
from graphopt.testing import apply_checked, run_through_target
from tests.relax_builders import matmul_add_module

FEATURES = _tvm.host_cpu_features()
HOST_AVX2 = "avx2" in FEATURES and "fma" in FEATURES
HOST_VNNI = {"avx512vnni", "avx512bw", "avx512f"} <= FEATURES

RUNNABLE = [
    pytest.param(
        "vnni", "icelake-server", marks=pytest.mark.skipif(not HOST_VNNI, reason="no VNNI")
    ),
    pytest.param("avx2", "znver3", marks=pytest.mark.skipif(not HOST_AVX2, reason="no AVX2")),
    # plain int32 vectors, no dot instruction (every x86 host runs it; fma is llvm.fma)
    pytest.param("generic", "x86-64"),
]

CASES = {
    # name: (x shape, N, group, symmetric)
    "gemv_odd_k_tail_group": ((1, 37), 5, 32, True),
    "gemv_asym_group_tail": ((1, 1, 130), 40, 64, False),
    "rows_3_one_tile_asym": ((1, 3, 71), 24, 32, False),
    "rows_9_tiles_and_a_row": ((9, 129), 33, 128, True),
    "rows_40_split_across_tasks": ((40, 64), 16, 32, False),
    "rows_5_fp16_scales": ((5, 96), 17, 64, False),
}


def _build(func, mcpu: str):
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=target)


def _weights(rng, spec: Int4MatmulSpec):
    w = rng.standard_normal((spec.k, spec.n)).astype(np.float32)
    q = quantize_rtn(w, spec.group, spec.symmetric, scale_dtype=spec.scale_dtype)
    return q.packed, q.scales, (np.zeros(1, np.uint8) if spec.symmetric else q.zeros)


def _run(spec: Int4MatmulSpec, isa: str, mcpu: str, x, natural) -> np.ndarray:
    plan = A8.plan_for(spec, K8.ISAS[isa])
    lib = _build(A8.int4_a8_matmul_kernel(spec, plan), mcpu)
    consts = A8.pack_a8(*natural, spec, plan)
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in consts), out)
    return out.numpy()


def _spec(case: str) -> Int4MatmulSpec:
    shape, n, group, sym = CASES[case]
    dtype = "float16" if "fp16" in case else "float32"
    return Int4MatmulSpec(shape, n, group, sym, scale_dtype=dtype, act="int8")


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_bit_exact_vs_numpy(isa, mcpu, case):
    spec = _spec(case)
    rng = np.random.default_rng(len(case))
    natural = _weights(rng, spec)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    x.flat[0] = 0.0
    got = _run(spec, isa, mcpu, x, natural)
    np.testing.assert_array_equal(got, reference_a8_matmul(x, *natural, spec))


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
def test_extreme_codes_and_an_all_zero_row(isa, mcpu):
    """Activations at +-127 / -128 and nibbles 0 / 15 with zero points 0 / 15: the largest
    group sums; a zero row takes the eps scale and gives exact zeros."""
    spec = Int4MatmulSpec((4, 130), 20, 64, False, act="int8")
    rng = np.random.default_rng(4)
    q = rng.choice(np.array([0, 15], np.uint8), (20, 130))
    zeros = rng.choice(np.array([0, 15], np.uint8), (20, 3))
    scales = rng.uniform(0.5, 2, (20, 3)).astype(np.float32)
    x = rng.choice(np.array([-3.0, 3.0], np.float32), (4, 130))
    x[1] = 0.0
    natural = (pack_nibbles(q), scales, zeros)
    got = _run(spec, "generic" if mcpu == "x86-64" else isa, mcpu, x, natural)
    np.testing.assert_array_equal(got, reference_a8_matmul(x, *natural, spec))
    assert not got[1].any()


def test_reference_is_rounded_activations_times_the_int4_weight():
    """The numpy model itself: its integer sums are those of fp32 arithmetic on the rounded
    activations and the dequantized weights (up to fp32 rounding)."""
    spec = Int4MatmulSpec((6, 97), 11, 32, False, act="int8")
    rng = np.random.default_rng(0)
    natural = _weights(rng, spec)
    x = rng.standard_normal(spec.x_shape).astype(np.float32) * 3
    a, s = quantize_rows(x)
    assert a.min() >= -128 and a.max() <= 127 and np.all(np.abs(a).max(1) == 127)
    want = fake_quant_rows(x).astype(np.float64) @ dequantized_weight(spec, *natural)
    got = reference_a8_matmul(x, *natural, spec)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_portable_kernel_computes_the_same_op():
    spec = Int4MatmulSpec((3, 70), 9, 32, False, act="int8")
    rng = np.random.default_rng(1)
    natural = _weights(rng, spec)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    lib = _build(portable_kernel(spec).with_attr("global_symbol", "main"), "x86-64")
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in natural), out)
    want = reference_a8_matmul(x, *natural, spec)  # fp32 sums in another order
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_weights_stay_two_per_byte():
    for isa, dtype in (("generic", np.uint8), ("avx2", np.uint16), ("vnni", np.uint16)):
        spec = Int4MatmulSpec((1, 64), 40, 32, False, act="int8")
        plan = A8.plan_for(spec, K8.ISAS[isa])
        wp, sp, zp = A8.pack_a8(*_weights(np.random.default_rng(0), spec), spec, plan)
        panels = -(-40 // plan.pl)
        assert wp.dtype == dtype and wp.nbytes == panels * plan.pl * 64 // 2
        assert sp.shape == zp.shape == (panels, 2, plan.pl)


ASM_TARGETS = {
    "vnni": {"kind": "llvm", "mcpu": "icelake-server"},
    "avx2": {"kind": "llvm", "mcpu": "znver3"},
    "sdot": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
}


@pytest.mark.parametrize("isa", list(ASM_TARGETS))
@pytest.mark.parametrize("rows", [1, 64])
def test_inner_loop_uses_the_dot_instruction(isa, rows):
    spec = Int4MatmulSpec((rows, 256), 96, 32, False, act="int8")
    func = A8.int4_a8_matmul_kernel(spec, A8.plan_for(spec, K8.ISAS[isa]))
    target = tvm.target.Target(ASM_TARGETS[isa])
    asm = tvm.tirx.build(tvm.IRModule({"main": func}), target=target).inspect_source("asm")
    # the unrolled tile issues 2 x mr dot instructions per word (avx2: vpmaddubsw per word,
    # vpmaddwd widening each run of words)
    tile = 2 * min(rows, K8.ISAS[isa].accumulators // 4)
    assert asm.count(K8.ASM_MARKER[isa]) >= tile
    if isa == "avx2":
        assert asm.count("vpmaddubsw") >= tile


def test_group_not_a_multiple_of_the_word_is_refused():
    spec = Int4MatmulSpec((1, 36), 8, 6, True, act="int8")
    with pytest.raises(ValueError, match="multiple of 4"):
        A8.plan_for(spec, K8.ISAS["avx2"])
    assert A8.plan_for(spec, K8.ISAS["generic"]).kpack == 2


@pytest.mark.skipif(not HOST_AVX2, reason="the stage's avx2 kernel runs here")
@pytest.mark.parametrize("rows", [1, 7])
def test_stage_builds_w4a8_kernels(rows):
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((70, 20)).astype(np.float32)
    opts = {"symmetric": "false", "act": "int8"}
    lowered = apply_checked(make_pass("lower-int4", opts), matmul_add_module(w, rows))
    znver3 = {"kind": "llvm", "mcpu": "znver3", "mtriple": "x86_64-linux-gnu"}
    with _tvm.make_target(znver3):  # the stage picks the current target's scheme
        result = make_pass("materialize-int4").run(lowered.module)
    assert result.stats["w4a8_kernels"] == 1 and result.stats["isa_avx2"] == 1
    specs = [spec_of(f) for f in result.module.functions.values()]
    assert [s.layout for s in specs if s is not None] == ["a8-avx2"]
    x = rng.standard_normal((1, rows, 70)).astype(np.float32)
    got = run_through_target(lowered.module, x)
    q = quantize_rtn(w, 32, False)
    spec = Int4MatmulSpec((1, rows, 70), 20, 32, False, act="int8")
    want = reference_a8_matmul(x, q.packed, q.scales, q.zeros, spec) + np.float32(1)
    np.testing.assert_array_equal(got, want)


def test_lower_int4_rejects_an_unknown_activation_type():
    from graphopt.errors import PipelineError

    w = np.ones((64, 8), np.float32)
    with pytest.raises(PipelineError, match="act must be one of"):
        make_pass("lower-int4", {"act": "int4"})(matmul_add_module(w, 1))


def test_four_nibble_words_decode_in_k_order():
    """vnni / sdot words: the uint16 the kernel loads, decoded as the kernel decodes it (in
    numpy), gives the four codes of k .. k + 3 in byte order, padding 0."""
    spec = Int4MatmulSpec((1, 10), 5, 32, False, act="int8")
    q = np.random.default_rng(2).integers(0, 16, (5, 10)).astype(np.uint8)
    plan = A8.plan_for(Int4MatmulSpec((1, 10), 5, 32, False, act="int8"), K8.ISAS["sdot"])
    zeros = np.zeros((5, 1), np.uint8)
    wp, _sp, _zp = A8.pack_a8(pack_nibbles(q), np.ones((5, 1), np.float32), zeros, spec, plan)
    v = wp.astype(np.uint32)  # [P, KW, PL]
    words = (v & 0x0F0F) | ((v << 12) & 0x0F0F0000)
    got = words.astype("<u4").view(np.uint8).reshape(*wp.shape, 4)  # bytes of each word
    got = got[0].transpose(1, 0, 2).reshape(plan.pl, -1)  # [channel, k]
    assert np.array_equal(got[:5, :10], q) and not got[:5, 10:].any() and not got[5:].any()
