"""The AVX512_BF16 kernel (targets/cpu/precision/dpbf16.py): bit for bit against numpy on every
shape class (run where this host has the instruction, compiled everywhere), its denormal
arithmetic against the instruction's model, symbolic rows, and which kernel a target gets."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from graphopt import _tvm
from graphopt import precision_ops as P
from graphopt.errors import PipelineError
from graphopt.pass_infra import make_pass
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision import materialize as M
from graphopt.targets.cpu.precision.neon_long import BFMLAL, FMLAL
from graphopt.testing import apply_checked
from tests.relax_builders import matmul_add_module

ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
ZNVER3 = {**ZNVER4, "mcpu": "znver3"}
GRAVITON3 = {"kind": "llvm", "mcpu": "neoverse-v1", "mtriple": "aarch64-linux-gnu"}
RPI5 = {**GRAVITON3, "mcpu": "cortex-a76"}
HOST_BF16 = {"avx512bf16", "avx512f"} <= _tvm.host_cpu_features()
needs_bf16 = pytest.mark.skipif(not HOST_BF16, reason="this host has no AVX512_BF16")

CASES = {
    # name: (x shape, N): GEMV, tails of K / N / rows, each register-tile width, row chunks
    "gemv_odd_k_tail_panel": ((1, 37), 21),
    "gemv_classifier": ((1, 320), 1000),
    "rows_5_one_panel": ((5, 64), 16),
    "rows_3d_odd_k": ((2, 3, 33), 17),
    "rows_9_three_panels": ((9, 130), 40),
    "k_under_a_vector": ((2, 5), 9),
    "rows_150_four_panels": ((150, 40), 64),
    "rows_100_five_panels_padded": ((100, 24), 80),
    "rows_3_long_odd_k": ((3, 1061), 20),
}


def _build(func, target=ZNVER4):
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(module, target=_tvm.make_target(target))


def _call(lib, x, packed, out_shape) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), out)
    return out.numpy()


def _case(name: str):
    shape, n = CASES[name]
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[-1], n)).astype(np.float32)
    return P.PrecisionMatmulSpec(shape, n, "bf16"), x, P.to_bits(w, "bf16")


@needs_bf16
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_bit_exact_vs_numpy(case):
    spec, x, wb = _case(case)
    got = _call(_build(D.dpbf16_kernel(spec)), x, D.pack_pairs(wb, spec), spec.out_shape)
    want = P.reference_matmul(x, wb, spec)
    assert np.array_equal(got, want)  # normal numbers: the fallback's model, bit for bit
    assert np.array_equal(got, D.reference_dpbf16(x, wb, spec))


@needs_bf16
def test_denormals_follow_the_instruction():
    """vdpbf16ps reads denormal bf16 inputs as zero and flushes denormal sums; the model
    says so, the fallback's model keeps them."""
    spec = P.PrecisionMatmulSpec((2, 4), 2, "bf16")
    x = np.array([[1e-39, 0.0, 1.0, 0.0], [3e-39, 2e-39, 0.0, 0.0]], np.float32)
    w = np.array([[1.0, 0.5], [0.0, 1.0], [1e-39, 2.0**-120], [0.0, 0.0]], np.float32)
    wb = P.to_bits(w, "bf16")
    got = _call(_build(D.dpbf16_kernel(spec)), x, D.pack_pairs(wb, spec), spec.out_shape)
    want = D.reference_dpbf16(x, wb, spec)
    assert np.array_equal(got, want)
    assert got[0, 0] == 0 and P.reference_matmul(x, wb, spec)[0, 0] != 0
    assert got[0, 1] == np.float32(2.0**-120)  # a normal product survives


@needs_bf16
def test_special_values_propagate():
    spec = P.PrecisionMatmulSpec((3, 2), 16, "bf16")
    x = np.array([[np.nan, 1.0], [np.inf, 1.0], [3e38, 3e38]], np.float32)
    wb = P.to_bits(np.ones((2, 16), np.float32), "bf16")
    got = _call(_build(D.dpbf16_kernel(spec)), x, D.pack_pairs(wb, spec), spec.out_shape)
    assert np.isnan(got[0]).all() and np.isposinf(got[1]).all() and np.isposinf(got[2]).all()


@needs_bf16
def test_symbolic_rows_one_build_every_row_count():
    rng = np.random.default_rng(3)
    wb = P.to_bits(rng.standard_normal((40, 72)).astype(np.float32), "bf16")
    spec = P.PrecisionMatmulSpec((1, "seq", 40), 72, "bf16")
    lib, packed = _build(D.dpbf16_kernel(spec)), D.pack_pairs(wb, spec)
    for rows in (1, 5, 49, 131):
        x = rng.standard_normal((1, rows, 40)).astype(np.float32)
        static = P.PrecisionMatmulSpec(x.shape, 72, "bf16")
        got = _call(lib, x, packed, static.out_shape)
        assert np.array_equal(got, P.reference_matmul(x, wb, static)), rows


def test_kernel_compiles_to_vdpbf16ps_on_any_host():
    spec = P.PrecisionMatmulSpec((8, 256), 64, "bf16")
    asm = _build(D.dpbf16_kernel(spec)).inspect_source("asm")
    assert "vdpbf16ps" in asm
    assert "vfmadd" not in asm  # the products are the instruction's, not widened FMAs


def test_pack_pairs_interleaves_k_pairs_per_channel():
    spec = P.PrecisionMatmulSpec((1, 3), 18, "bf16")  # odd K, N past one panel
    bits = np.arange(3 * 18, dtype=np.uint16).reshape(3, 18) + 1
    words = D.pack_pairs(bits, spec).view(np.uint16).reshape(*D.pack_pairs(bits, spec).shape, 2)
    assert words.shape == (2, 2, 16, 2)  # 2 panels (no tile padding for 2), 2 k pairs
    assert list(words[0, 0, 3]) == [bits[0, 3], bits[1, 3]]  # k even low, k odd high
    assert list(words[1, 1, 1]) == [bits[2, 17], 0]  # K padded with a zero
    assert not words[1, :, 2:].any()  # channels past N are zero


def test_split_pairs_hold_a_panel_at_k_even_then_at_k_odd():
    """FMLAL's layout: a pair's 16 words are the 16 channels at k even, then at k odd."""
    spec = P.PrecisionMatmulSpec((5, 3), 18, "fp16")
    bits = np.arange(3 * 18, dtype=np.uint16).reshape(3, 18) + 1
    halves = D.pack_pairs(bits, spec, FMLAL).view(np.uint16)
    assert halves.shape == (2, 2, 32)  # 2 panels, 2 k pairs, 32 halves a pair
    assert list(halves[0, 0, :16]) == list(bits[0, :16])
    assert list(halves[0, 0, 16:]) == list(bits[1, :16])
    assert list(halves[1, 1, :2]) == list(bits[2, 16:])  # k = 2, channels 16 and 17
    assert not halves[1, 1, 16:].any()  # K padded with a zero row


@pytest.mark.parametrize(
    "rows,n,instr,want",
    [
        (1, 64, D.DPBF16, (1, 4)),
        (128, 64, D.DPBF16, (6, 4)),
        (128, 48, D.DPBF16, (8, 3)),
        (1, 64, BFMLAL, (1, 4)),  # a GEMV: four panels, one row
        (128, 64, BFMLAL, (2, 2)),  # 4 accumulators of 4 NEON registers each
        (128, 48, BFMLAL, (4, 1)),
        (128, 80, FMLAL, (2, 2)),  # 5 panels: one zero panel, tiles of 2
    ],
)
def test_register_tile_fits_the_instructions_registers(rows, n, instr, want):
    tile = D.tile_for(P.PrecisionMatmulSpec((rows, 64), n, instr.precision), instr)
    assert (tile.mr, tile.nr) == want


@pytest.mark.parametrize(
    "target,precision,option,want",
    [
        (ZNVER4, "bf16", "auto", "dpbf16"),
        (ZNVER3, "bf16", "auto", "fma"),
        (ZNVER4, "fp16", "auto", "fma"),
        (ZNVER4, "bf16", "fma", "fma"),
        (GRAVITON3, "bf16", "auto", "bfmlal"),
        (GRAVITON3, "fp16", "auto", "fmlal"),
        (RPI5, "bf16", "auto", "fma"),  # Cortex-A76: fp16 arithmetic, no bf16, no fp16fml
        (RPI5, "fp16", "auto", "fma"),
    ],
)
def test_kernel_choice_reads_the_target(target, precision, option, want):
    with _tvm.make_target(target):
        assert M.resolve_kernel(option, precision) == want


@pytest.mark.parametrize(
    "target,kernel,precision,message",
    [
        (ZNVER3, "dpbf16", "bf16", "AVX512_BF16"),
        (ZNVER4, "bfmlal", "bf16", r"\+bf16"),
        (RPI5, "fmlal", "fp16", r"\+fp16fml"),
        (GRAVITON3, "fmlal", "bf16", r"fp16 on a target CPU with \+fp16fml"),
    ],
)
def test_forcing_a_missing_instruction_is_an_error(target, kernel, precision, message):
    with _tvm.make_target(target), pytest.raises(PipelineError, match=message):
        M.resolve_kernel(kernel, precision)


def test_stage_counts_the_kernel_it_chose():
    w = np.random.default_rng(7).standard_normal((70, 20)).astype(np.float32)
    lowered = apply_checked(make_pass("lower-precision", {"precision": "bf16"}),
                            matmul_add_module(w, 5))  # fmt: skip
    with _tvm.make_target(ZNVER4):
        result = make_pass("materialize-precision").run(lowered.module)
    assert result.stats == {"kernels": 1, "kernel_dpbf16": 1, "calls": 1}
    layouts = [P.spec_of(f).layout for f in result.module.functions.values() if P.spec_of(f)]
    assert layouts == [D.LAYOUT]
