"""16-bit precision with symbolic dims: the 16-bit matmul kernels take a symbolic row count
(one build, any number of tokens or pixels) bit for bit against numpy, and a transformer block
compiled once with `--precision bf16` and a sequence range runs at several lengths like its
static bf16 builds and close to onnxruntime, with or without the `--max-drop` budget."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm

import graphopt
from graphopt import _tvm
from graphopt import precision_ops as P
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.inputs import save_npz
from graphopt.targets.cpu.precision import kernels as K
from tests import model_builders as mb

ZNVER3 = {"kind": "llvm", "mcpu": "znver3", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
K_IN, N_OUT = 40, 24


def _build(func):
    target = _tvm.make_target(ZNVER3)
    return tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)


@pytest.mark.parametrize("precision", P.PRECISIONS)
@pytest.mark.parametrize("kernel", ["cpu", "portable"])
def test_symbolic_row_kernels_exact_at_every_row_count(kernel, precision):
    """One build for x [1, seq, K]: 1 row, a partial register tile, and past one chunk."""
    rng = np.random.default_rng(3)
    wb = P.to_bits(rng.standard_normal((K_IN, N_OUT)).astype(np.float32), precision)
    spec = P.PrecisionMatmulSpec((1, "seq", K_IN), N_OUT, precision)
    if kernel == "cpu":
        lib, weight = _build(K.matmul16_kernel(spec)), K.pack_panels(wb, spec)
    else:
        lib, weight = _build(P.portable_kernel(spec)), wb
    for rows in (1, 5, 70, 131):
        x = rng.standard_normal((1, rows, K_IN)).astype(np.float32)
        out = tvm.runtime.tensor(np.zeros((1, rows, N_OUT), np.float32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(weight), out)
        static = P.PrecisionMatmulSpec(x.shape, N_OUT, precision)
        assert np.array_equal(out.numpy(), P.reference_matmul(x, wb, static)), rows


def _feeds(n: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(n).standard_normal((1, n, mb.TRANSFORMER["dim"]))
    return {"x": x.astype(np.float32), "mask": mb.causal_mask(seq=n)}


def _ort(model, feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _bf16(**kw) -> list:
    return [Precision(PrecisionOptions("bf16", edges=True, **kw))]


def test_symbolic_bf16_block_matches_static_builds_and_onnxruntime(tmp_path):
    model = mb.transformer_block(seq="seq")
    art = graphopt.compile(
        model, tmp_path / "sym", input_shapes={"x": (1, "1..40", 32)}, compression=_bf16()
    )
    assert art.manifest["precision"]["low_layers"] >= 4
    for n in (1, 7, 33):
        static = graphopt.compile(
            model, tmp_path / f"s{n}", input_shapes={"x": (1, n, 32)}, compression=_bf16()
        )
        got, same = art.run(_feeds(n)), static.run(_feeds(n))
        for name, want in zip(got, _ort(model, _feeds(n))):
            np.testing.assert_allclose(got[name], same[name], rtol=1e-5, atol=1e-5)
            cos = np.dot(got[name].ravel(), want.ravel()) / (
                np.linalg.norm(got[name]) * np.linalg.norm(want)
            )
            assert cos > 0.9999, (n, name, cos)


def test_symbolic_mixed_budget_calibrates_on_any_length(tmp_path):
    """--max-drop with a range: the budget scores calibration samples of another length
    than the example size, and the artifact runs at others."""
    model = mb.transformer_block(seq="seq")
    calib = tmp_path / "calib.npz"
    save_npz(calib, _feeds(12))  # one 12-token sample; the example size is 16
    opts = {"max_drop": 0.5, "calibration": str(calib)}
    art = graphopt.compile(
        model,
        tmp_path / "mixed",
        input_shapes={"x": (1, "1..40", 32)},
        compression=[Precision(PrecisionOptions("mixed", **opts))],
    )
    assert art.manifest["precision"]["accuracy"] is not None
    for n in (3, 40):
        got = art.run(_feeds(n))
        for name, want in zip(got, _ort(model, _feeds(n))):
            np.testing.assert_allclose(got[name], want, rtol=0.05, atol=0.05)
