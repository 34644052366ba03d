"""Pruning with symbolic dims: one build's block-sparse kernels run every row count in range.

The CPU block-sparse kernel and the portable one, built once for x [1, seq, K], match numpy
at several row counts. A transformer block pruned to 70% zero blocks and compiled with a
symbolic sequence takes the same sparse kernels as its static build and gives its outputs;
structured pruning (`--prune macs=...`) fits on calibration samples of one length, counts
multiply-adds at the range's example size and gives what its static build at the samples'
length gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import graphopt
from graphopt import _tvm
from graphopt.compress.channels.method import ChannelOptions, Channels
from graphopt.compress.prune.method import Prune, PruneOptions
from graphopt.compress.prune.spec import parse_spec
from graphopt.passes._sparse_reference import reference_kernel
from graphopt.sparse_ops import SparseSpec, to_bsr
from graphopt.targets.cpu.schedules.common import CpuInfo
from graphopt.targets.cpu.sparse.kernels import bsr_kernel
from tests import model_builders as mb
from tests.sparse_models import block_sparse

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOST_AVX2 = "avx2" in _tvm.host_cpu_features()
K_IN, N_OUT, BLOCK = 48, 64, 16
DIM = mb.TRANSFORMER["dim"]


def _build(func, mcpu: str):
    func = func.with_attr("global_symbol", "main")
    target = _tvm.make_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=target)


@pytest.mark.parametrize(
    "kernel",
    [
        pytest.param("cpu", marks=pytest.mark.skipif(not HOST_AVX2, reason="no AVX2")),
        "portable",
    ],
)
def test_block_sparse_kernels_at_every_row_count(kernel):
    rng = np.random.default_rng(0)
    w = block_sparse(K_IN, N_OUT, BLOCK, 0.3)
    values, indices, indptr = to_bsr(w, BLOCK)
    bias = rng.standard_normal(N_OUT).astype(np.float32)
    spec = SparseSpec((1, "seq", K_IN), N_OUT, BLOCK, len(indices), 0.0, 6.0)
    if kernel == "cpu":
        lib = _build(bsr_kernel(spec, CpuInfo(lanes=8, registers=16, cores=2)), "haswell")
    else:
        lib = _build(reference_kernel(spec), "x86-64")
    for rows in (1, 5, 37):  # one row, a partial register tile, several tiles and a tail
        x = rng.standard_normal((1, rows, K_IN)).astype(np.float32)
        out = tvm.runtime.tensor(np.zeros((1, rows, N_OUT), np.float32))
        lib["main"](*(tvm.runtime.tensor(a) for a in (x, values, indices, indptr, bias)), out)
        want = np.clip(x @ w + bias, 0.0, 6.0)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=f"{rows}")


def _block_feeds(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, n, DIM)).astype(np.float32)
    return {"x": x, "mask": mb.causal_mask(seq=n)}


def _stats(art, name: str) -> dict:
    return next(r["stats"] for r in art.manifest["report"]["passes"] if r["pass"] == name)


def _first(outputs) -> np.ndarray:
    return outputs[0] if isinstance(outputs, list) else next(iter(outputs.values()))


def _compile(model, path, seq, method, opt_level=3):
    return graphopt.compile(
        model, path, input_shapes={"x": (1, seq, DIM)}, opt_level=opt_level, compression=[method]
    )


@pytest.mark.parametrize("opt_level", [2, 3])
def test_block_pruned_symbolic_block_equals_its_static_build(tmp_path, opt_level):
    """Every matmul goes sparse, at -O3 too (its fusion leaves layers with sparse weights out
    of its groups and out of the combined Q/K/V matmul)."""
    model = mb.transformer_block(seq="seq")
    method = Prune(PruneOptions(parse_spec("block=0.7"), method="magnitude"))
    sym = _compile(model, tmp_path / "symbolic", "1..48", method, opt_level)
    static = _compile(model, tmp_path / "static", 33, method, opt_level)
    assert _stats(sym, "sparsify")["layers_sparse"] == 6
    # Q, K, V share one kernel; the output projection and the FFN's second matmul end in a
    # residual add, folded into theirs
    assert _stats(sym, "sparsify")["residual_adds"] == 2
    assert _stats(sym, "materialize-sparse")["kernels"] == 4
    assert _stats(sym, "sparsify") == _stats(static, "sparsify")
    feeds = _block_feeds(33)
    got, want = _first(sym.run(feeds)), _first(static.run(feeds))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _first(sym.run(_block_feeds(1))).shape == (1, 1, DIM)


def test_structured_pruning_with_a_symbolic_sequence(tmp_path):
    """Calibration samples of 24 tokens; multiply-adds count at the range's example size
    (16 tokens for 1..48): the same fractions and decisions as a static build at 24."""
    model = mb.transformer_block(seq="seq")
    cal = tmp_path / "cal.npz"
    x = np.random.default_rng(5).standard_normal((8, 24, DIM)).astype(np.float32)
    np.savez(cal, x=x, mask=np.stack([mb.causal_mask(seq=24)] * 8))
    method = Channels(ChannelOptions(macs=0.8, calibration=str(cal)))
    sym = _compile(model, tmp_path / "symbolic", "1..48", method)
    static = _compile(model, tmp_path / "static", 24, method)
    pruned, pruned_static = sym.manifest["channels"], static.manifest["channels"]
    assert pruned["macs"]["before"] == 16 / 24 * pruned_static["macs"]["before"]  # at 16 tokens
    assert pruned["ratio"] == pruned_static["ratio"] < 0.9
    kept = [r["kept"] for r in pruned["regions"]]
    assert kept == [r["kept"] for r in pruned_static["regions"]]
    feeds = _block_feeds(24)
    np.testing.assert_allclose(
        _first(sym.run(feeds)), _first(static.run(feeds)), rtol=1e-5, atol=1e-5
    )
    assert _first(sym.run(_block_feeds(40))).shape == (1, 40, DIM)
