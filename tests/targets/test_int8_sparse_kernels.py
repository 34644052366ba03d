"""The block-sparse int8 kernels (`targets/cpu/int8/sparse.py`): bit for bit the dense int8
kernel's results on the same zeros, for every scheme that runs here, every row packing (plain,
fused quantization, windows) and the awkward counts (GEMV partial sums, tail vectors, empty
weights); the BSR packing round-trips; the inner loop is one dot instruction per row with
the row's word broadcast from memory."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.int8 import sparse as S
from tests.int8_kernel_tools import build_kernel, call_kernel, padded, random_ints
from tests.targets.test_int8_kernels import RUNNABLE


def _block_sparse(rng, k: int, n: int, isa: K.Isa, density: float) -> np.ndarray:
    """int8 [K, N] whose nonzeros fill a `density` fraction of the scheme's blocks."""
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    keep = rng.random((-(-k // isa.kpack), -(-n // isa.lanes))) < density
    mask = np.repeat(np.repeat(keep, isa.kpack, 0), isa.lanes, 1)[:k, :n]
    return np.where(mask, w, 0).astype(np.int8)


def _both(isa_name, mcpu, spec, x, w, ep, zp, shape, window=None, kn=None):
    """Outputs of the dense and the sparse kernel on the same operands."""
    isa = K.ISAS[isa_name]
    rng = np.random.default_rng(5)
    kn = w if kn is None else kn
    n = kn.shape[1]
    corr = rng.integers(-5000, 5000, n).astype(np.int32)
    scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    fbias = rng.normal(size=n).astype(np.float32)
    xs = [np.array(0.37, np.float32)] if window is None else [np.array(1.0, np.float32)]
    if spec.per_row:
        xs = [rng.uniform(0.1, 1.0, spec.rows).astype(np.float32)]
    dplan, splan = K.matmul_plan(spec, isa), S.sparse_plan(spec, isa)
    per = [(padded(a, p.n_pad) for a in (corr, scale, fbias)) for p in (dplan, splan)]
    dense = K.matmul_kernel(spec, dplan, shape, zp, ep, window=window)
    sparse = S.sparse_matmul_kernel(spec, splan, shape, zp, ep, 0.5, window=window)
    out_shape = (*shape[:-1], n) if window is None else (shape[0], *window.out_hw, n)
    got = []
    for func, weights, channels in (
        (dense, [K.pack_matmul_weight(kn, dplan)], per[0]),
        (sparse, S.pack_bsr(kn, isa), per[1]),
    ):
        args = [x, *weights, *channels, *xs]
        got.append(call_kernel(build_kernel(func, mcpu), args, out_shape, ep.out_dtype))
    return got


MATMULS = {
    # name: (x shape, n, density)
    "tokens_tail_vector": ((2, 7, 13), 21, 0.5),
    "rows_of_49": ((1, 49, 96), 40, 0.3),
    "gemv_odd_block_counts": ((1, 256), 160, 0.5),  # partial sums with a remainder
    "gemv_classifier": ((1, 1280), 1000, 0.3),
    "all_zero": ((5, 64), 48, 0.0),
    "dense_weights": ((33, 70), 40, 1.0),
}


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
@pytest.mark.parametrize("name", list(MATMULS))
@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_sparse_matmul_equals_dense(isa, mcpu, name, act_dtype):
    shape, n, density = MATMULS[name]
    rng = np.random.default_rng(n)
    rows, k = int(np.prod(shape[:-1])), shape[-1]
    w = _block_sparse(rng, k, n, K.ISAS[isa], density)
    x = random_ints(rng, shape, act_dtype)
    ep = K.Epilogue("uint8", zp=7, lo=7.0, hi=200.0)
    spec = K.MatmulSpec(rows, k, n, act_dtype)
    dense, sparse = _both(isa, mcpu, spec, x, w, ep, 3, shape)
    np.testing.assert_array_equal(sparse, dense)
    assert len(np.unique(dense)) > 10 or density == 0.0


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
def test_fused_quantization_rows(isa, mcpu):
    """fp32 tokens quantized per row by the kernel (MiniLM's dynamic int8), dequantized out."""
    rng = np.random.default_rng(2)
    shape, n = (3, 17, 64), 96
    w = _block_sparse(rng, 64, n, K.ISAS[isa], 0.4)
    x = rng.standard_normal(shape).astype(np.float32)
    spec = K.MatmulSpec(51, 64, n, "int8", fused_quant=True)
    dense, sparse = _both(isa, mcpu, spec, x, w, K.Epilogue("float32"), 0, shape)
    np.testing.assert_array_equal(sparse, dense)


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
def test_window_conv(isa, mcpu):
    """A 3x3 conv over NHWC as the matmul over windows, its taps' weights block-sparse."""
    rng = np.random.default_rng(4)
    scheme = K.ISAS[isa]
    conv = K.ConvSpec(1, 12, 9, 9, 32, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, "uint8")
    w = rng.integers(-127, 128, (32, 12, 3, 3)).astype(np.int8)
    kn = K.window_matrix(w, scheme)
    kn = np.where(_block_sparse(rng, *kn.shape, scheme, 0.4) != 0, kn, 0).astype(np.int8)
    x = random_ints(rng, (1, 9, 9, 12), "uint8")
    oh, ow = conv.out_hw
    k = kn.shape[0]
    spec = K.MatmulSpec(oh * ow, k, 32, "uint8")
    ep = K.Epilogue("int8")
    dense, sparse = _both(isa, mcpu, spec, x, None, ep, 9, x.shape, window=conv, kn=kn)
    np.testing.assert_array_equal(sparse, dense)


def test_bsr_round_trip_and_density():
    isa = K.ISAS["vnni"]
    rng = np.random.default_rng(0)
    w = _block_sparse(rng, 70, 40, isa, 0.3)
    values, indices, indptr = S.pack_bsr(w, isa)
    words = np.zeros((3, 18, 16), np.int32)  # [N_pad / lanes, kwords, lanes]
    for vec in range(3):
        for j in range(indptr[vec], indptr[vec + 1]):
            words[vec, indices[j]] = values[j]
    np.testing.assert_array_equal(words, S.weight_words(w, isa))
    assert S.block_density(w, isa) == pytest.approx(len(values) / (3 * 18))
    empty = S.pack_bsr(np.zeros((64, 32), np.int8), isa)
    assert empty[0].shape == (1, 16) and list(empty[2]) == [0, 0, 0]


def test_plan_evens_row_tiles():
    isa = K.ISAS["vnni"]
    assert S.sparse_plan(K.MatmulSpec(49, 960, 160, "uint8"), isa).mr == 17
    assert S.sparse_plan(K.MatmulSpec(1, 1280, 1000, "uint8"), isa).mr == 1
    assert S.sparse_plan(K.MatmulSpec("rows", 384, 384, "int8"), isa).mr == isa.accumulators


def test_dot_reads_the_row_word_as_a_broadcast():
    """vnni: per nonzero block one weight load, then per row of the tile (17 of 49 pixels) one
    broadcast of the row's word loaded at a constant offset and one vpdpbusd; no shuffles."""
    spec = K.MatmulSpec(49, 960, 160, "uint8")
    isa = K.ISAS["vnni"]
    plan = S.sparse_plan(spec, isa)
    func = S.sparse_matmul_kernel(spec, plan, (1, 7, 7, 960), 0, K.Epilogue("int8"), 0.3)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
    asm = tvm.tirx.build(tvm.IRModule({"main": func}), target=target).inspect_source("asm")
    assert asm.count("vpdpbusd") == plan.mr == 17
    assert len(re.findall(r"vpbroadcastd\t\d*\(%r\w+,%r\w+,4\), %zmm", asm)) == 17
    assert "vpextrd" not in asm and "vpermd" not in asm


@pytest.mark.parametrize("isa,mcpu", RUNNABLE)
def test_symbolic_rows(isa, mcpu):
    """One kernel for any token count (a sequence range): the dense kernel's outputs at 37
    rows (a partial last tile) and at 3 (fewer than one tile)."""
    scheme = K.ISAS[isa]
    rng = np.random.default_rng(6)
    k, n = 96, 48
    w = _block_sparse(rng, k, n, scheme, 0.4)
    spec = K.MatmulSpec("s", k, n, "int8", fused_quant=True)
    ep = K.Epilogue("float32")
    dplan, splan = K.matmul_plan(spec, scheme), S.sparse_plan(spec, scheme)
    dense = build_kernel(K.matmul_kernel(spec, dplan, ("s", k), 0, ep), mcpu)
    sparse = build_kernel(S.sparse_matmul_kernel(spec, splan, ("s", k), 0, ep, 0.4), mcpu)
    scale = padded(rng.uniform(0.001, 0.02, n).astype(np.float32), dplan.n_pad)
    zeros = np.zeros(dplan.n_pad, np.int32), np.zeros(dplan.n_pad, np.float32)
    channels = [zeros[0], scale, zeros[1], np.array(1.0, np.float32)]
    for rows in (37, 3):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        want = call_kernel(dense, [x, K.pack_matmul_weight(w, dplan), *channels], (rows, n),
                           "float32")  # fmt: skip
        got = call_kernel(sparse, [x, *S.pack_bsr(w, scheme), *channels], (rows, n), "float32")
        np.testing.assert_array_equal(got, want)
        assert np.abs(want).max() > 0
