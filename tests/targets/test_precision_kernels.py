"""16-bit conversions and the 16-bit-weight matmul kernels (graphopt.precision_ops,
targets/cpu/precision) against numpy: rounding incl. NaN/Inf/denormals, the portable and the
CPU panel kernel bit for bit, against the vdpbf16ps arithmetic model, the target gate."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from graphopt import _tvm
from graphopt import precision_ops as P
from graphopt.pass_infra import make_pass
from graphopt.target_infra import make_target
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision import kernels as K
from graphopt.testing import apply_checked, run_through_target
from tests.relax_builders import matmul_add_module

ZNVER3 = {"kind": "llvm", "mcpu": "znver3", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
SPECIAL = [
    0x00000000, 0x80000000, 0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF,
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFF800001,
    0x7FFFFFFF, 0x00000001, 0x00008000, 0x00018000, 0x0000FFFF, 0x807FFFFF, 0x00800000,
    0x33800000, 0x33000001, 0x387FC000, 0x477FF000, 0x477FF001,
]  # fmt: skip


def _bits(values) -> np.ndarray:
    return np.array(values, np.uint32).view(np.float32)


def _bf16_by_value(x: np.ndarray) -> np.ndarray:
    """Independent model: the nearer of the two bf16 neighbours in float64, ties to the even
    one (finite inputs whose neighbours are finite)."""
    u = x.view(np.uint32)
    lo = (u >> 16).astype(np.uint16)
    hi = lo + np.uint16(1)
    f = x.astype(np.float64)
    d_lo = np.abs(f - P.bf16_bits_to_f32(lo).astype(np.float64))
    d_hi = np.abs(P.bf16_bits_to_f32(hi).astype(np.float64) - f)
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (lo % 2 == 1))
    return np.where(pick_hi, hi, lo)


def test_bf16_rounds_to_nearest_even_like_the_value_model():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    u = np.concatenate([u, np.array(SPECIAL, np.uint32)])
    x = u.view(np.float32)
    finite = np.isfinite(x) & ((u & 0x7FFFFFFF) < 0x7F7F8000)  # neighbours finite
    assert np.array_equal(P.f32_to_bf16_bits(x[finite]), _bf16_by_value(x[finite]))


def test_bf16_special_values():
    got = P.f32_to_bf16_bits(_bits(SPECIAL[:16]))
    want = [0x0000, 0x8000, 0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F81, 0x7F80, 0xFF80, 0x7F80,
            0xFF80, 0x7FC0, 0x7FC0, 0xFFC0, 0x7FFF, 0x0000]  # fmt: skip
    assert [hex(v) for v in got] == [hex(v) for v in want]
    denormals = P.f32_to_bf16_bits(_bits([0x00008000, 0x00018000, 0x0000FFFF, 0x807FFFFF]))
    assert list(denormals) == [0x0000, 0x0002, 0x0001, 0x8080]


@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_tir_rounding_matches_numpy_bit_for_bit(precision):
    rng = np.random.default_rng(1)
    u = np.concatenate([np.array(SPECIAL, np.uint32), rng.integers(0, 2**32, 4093, np.uint64)])
    x = u.astype(np.uint32).view(np.float32)
    x = np.concatenate([x, (rng.standard_normal(4096) * 1e-6).astype(np.float32)])
    lib = tvm.tirx.build(
        tvm.IRModule(
            {"main": P.round_kernel(x.shape, precision).with_attr("global_symbol", "main")}
        ),
        target=_tvm.make_target(ZNVER3),
    )
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    got, want = out.numpy(), P.round_to(x, precision)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


CASES = {
    # name: (x shape, N)
    "gemv_odd_k_tail_panel": ((1, 37), 21),
    "gemv_whole_panels": ((1, 64), 32),
    "rows_5_two_tiles": ((5, 64), 48),
    "rows_3d_odd_k": ((2, 3, 33), 17),
    "rows_9_tail_row": ((9, 130), 40),
    "k_under_a_vector": ((2, 5), 9),
    "rows_150_three_chunks": ((150, 40), 24),
    "rows_130_parallel_rounding": ((130, 130), 20),
}


def _run(func, x, consts, out_shape, target=None) -> np.ndarray:
    target = _tvm.make_target(target or ZNVER3)
    lib = tvm.tirx.build(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target
    )
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in consts), out)
    return out.numpy()


def _case(name: str, precision: str):
    shape, n = CASES[name]
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[-1], n)).astype(np.float32)
    return P.PrecisionMatmulSpec(shape, n, precision), x, P.to_bits(w, precision)


@pytest.mark.parametrize("lanes", [8, 16], ids=["avx2", "avx512"])
@pytest.mark.parametrize("precision", P.PRECISIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_kernel_bit_exact_vs_numpy(case, precision, lanes):
    """8 lanes: 4 rows x 2 vectors a register tile; 16 (AVX-512): 8 rows x 1 vector."""
    if lanes == 16 and "avx512f" not in _tvm.host_cpu_features():
        pytest.skip("this host has no AVX-512")
    spec, x, wb = _case(case, precision)
    target = ZNVER3 if lanes == 8 else {**ZNVER3, "mcpu": "znver4"}
    func = K.matmul16_kernel(spec, lanes)
    got = _run(func, x, [K.pack_panels(wb, spec)], spec.out_shape, target)
    want = P.reference_matmul(x, wb, spec)
    assert np.array_equal(got, want)
    # and the rounding really happened: fp32 arithmetic gives other numbers
    assert not np.array_equal(
        want, (x.reshape(-1, spec.k) @ P.from_bits(wb, precision)).reshape(want.shape)
    )


@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_portable_kernel_bit_exact_vs_numpy(precision):
    spec, x, wb = _case("rows_3d_odd_k", precision)
    got = _run(P.portable_kernel(spec), x, [wb], spec.out_shape)
    assert np.array_equal(got, P.reference_matmul(x, wb, spec))


def test_fallback_kernel_computes_what_vdpbf16ps_would():
    """The fallback sums in vdpbf16ps's order, so with normal numbers it gives the dot
    instruction's results bit for bit (denormals differ: the instruction flushes them)."""
    spec, x, wb = _case("rows_9_tail_row", "bf16")
    got = _run(K.matmul16_kernel(spec), x, [K.pack_panels(wb, spec)], spec.out_shape)
    assert np.array_equal(got, D.reference_dpbf16(x, wb, spec))
    tiny = P.PrecisionMatmulSpec((1, 2), 1, "bf16")
    x1 = np.array([[1e-39, 0.0]], np.float32)  # a denormal activation, still one in bf16
    w1 = P.to_bits(np.array([[1.0], [0.0]], np.float32), "bf16")
    got = _run(K.matmul16_kernel(tiny), x1, [K.pack_panels(w1, tiny)], tiny.out_shape)
    assert got[0, 0] != 0 and np.array_equal(got, P.reference_matmul(x1, w1, tiny))
    assert D.reference_dpbf16(x1, w1, tiny)[0, 0] == 0


@pytest.mark.parametrize("precision,instruction", [("bf16", "vpslld"), ("fp16", "vcvtph2ps")])
def test_cpu_kernel_widens_in_registers(precision, instruction):
    spec = P.PrecisionMatmulSpec((1, 256), 64, precision)
    func = K.matmul16_kernel(spec).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=_tvm.make_target(ZNVER3))
    asm = lib.inspect_source("asm")
    assert instruction in asm
    assert "vfmadd" in asm


@pytest.mark.parametrize(
    "mcpu,precision,note",
    [
        ("znver3", "bf16", "no AVX512_BF16"),
        ("znver4", "bf16", "vdpbf16ps (AVX512_BF16)"),
        ("sapphirerapids", "fp16", "AVX512_FP16 present"),
        ("znver3", "fp16", "F16C conversions"),
        ("neoverse-v1", "bf16", "BFMLALB/BFMLALT (+bf16)"),
        ("neoverse-v1", "fp16", "FMLAL (+fp16fml)"),
        ("cortex-a76", "bf16", "computed in fp32 on this target: no +bf16"),
        ("cortex-a76", "fp16", "computed in fp32 on this target: no +fp16fml"),
    ],
)
def test_gate_reads_the_target_not_the_host(mcpu, precision, note):
    triple = "x86_64-linux-gnu" if mcpu.startswith(("zn", "sap")) else "aarch64-linux-gnu"
    target = _tvm.make_target({"kind": "llvm", "mcpu": mcpu, "mtriple": triple})
    assert note in P.kernel_note(target, precision)


@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_stage_replaces_the_portable_kernel(precision):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((70, 20)).astype(np.float32)
    lowered = apply_checked(
        make_pass("lower-precision", {"precision": precision}), matmul_add_module(w, 5)
    )
    assert lowered.stats == {
        "matmuls": 1, "pointwise_convs": 0, "depthwise_convs": 0, "window_convs": 0,
        "embeddings": 0,
    }  # fmt: skip
    with _tvm.make_target(ZNVER3):  # the fallback kernel (test_precision_dpbf16: the other)
        result = make_pass("materialize-precision").run(lowered.module)
    assert result.stats == {"kernels": 1, "kernel_fma": 1, "calls": 1}
    specs = [P.spec_of(f) for f in result.module.functions.values()]
    assert [s.layout for s in specs if s is not None] == [K.LAYOUT]
    x = rng.standard_normal((1, 5, 70)).astype(np.float32)
    got = run_through_target(lowered.module, x)  # the x86 stages materialize it themselves
    spec = P.PrecisionMatmulSpec((1, 5, 70), 20, precision)
    want = P.reference_matmul(x, P.to_bits(w, precision), spec) + np.float32(1)
    np.testing.assert_array_equal(got, want)
    assert not make_pass("materialize-precision").run(result.module).modified


def test_cpu_targets_schedule_16bit_kernels():
    for name in ("x86", "arm"):
        assert "materialize-precision" in make_target(name).stages()["schedule"]
