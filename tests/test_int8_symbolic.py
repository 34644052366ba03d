"""int8 with symbolic dims: one build's integer matmul kernels run every row count in range.

The kernels are checked against numpy at several row counts (one build); a transformer block
compiled with a symbolic sequence and `--quantize int8` lowers every matmul to the integer
kernels, matches its static int8 builds at the same sizes, and stays close to onnxruntime
fp32; calibration takes samples of any length in range and refuses others; a CNN whose
convolutions have a symbolic batch is a one-line error (convolution kernels are static).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm

import graphopt
from graphopt import _tvm
from graphopt import int8_ops as O
from graphopt.compress.common.data import batch_feeds
from graphopt.compress.common.errors import CalibrationError
from graphopt.compress.int8.flow import QuantOptions
from graphopt.compress.int8.method import Int8
from graphopt.errors import GraphoptError
from graphopt.frontend import SymDim, TensorSpec
from graphopt.targets.cpu.int8 import kernels as K
from tests import model_builders as mb

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif("avx2" not in _tvm.host_cpu_features(), reason="needs AVX2"),
]

ROWS = (1, 5, 37)  # one row, a part of a register tile, several tiles and a tail


def _build(func):
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=target)


def _run(lib, args, out_shape, out_dtype):
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(np.require(a, requirements="C")) for a in args], out)
    return out.numpy()


def _constants(rng, k, n, plan, shift):
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    corr = -shift * w.astype(np.int64).sum(0)
    scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    fbias = rng.normal(size=n).astype(np.float32)

    def pad(v, dtype):
        out = np.zeros(plan.n_pad, dtype)
        out[:n] = v
        return out

    packed = [K.pack_matmul_weight(w, plan), pad(corr, np.int32), pad(scale, np.float32)]
    return w, scale, fbias, [*packed, pad(fbias, np.float32)]


def test_requant_matmul_kernel_exact_at_every_row_count():
    isa, k, n, zp = K.ISAS["avx2"], 70, 40, 3
    spec = O.MatmulSpec("seq", k, n, "int8")
    plan = K.matmul_plan(spec, isa)
    ep = O.Epilogue("uint8", zp=7, lo=7.0, hi=200.0)
    lib = _build(K.matmul_kernel(spec, plan, (1, "seq", k), zp, ep))
    rng = np.random.default_rng(0)
    w, scale, fbias, consts = _constants(rng, k, n, plan, zp + isa.offset("int8"))
    for rows in ROWS:
        x = rng.integers(-128, 128, (1, rows, k)).astype(np.int8)
        got = _run(lib, [x, *consts, np.array(1.0, np.float32)], (1, rows, n), "uint8")
        acc = (x.reshape(rows, k).astype(np.int64) - zp) @ w.astype(np.int64)
        want = ep.numpy(acc, 0, scale, fbias).reshape(got.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"rows={rows}")


def test_fused_row_quant_kernel_at_every_row_count():
    """fp32 rows quantized by the kernel with their own scales: the integer part is exact,
    the last fp32 multiply-add may fuse into an FMA."""
    isa, k, n = K.ISAS["avx2"], 33, 19
    spec = O.MatmulSpec("seq", k, n, "int8", per_row=True, fused_quant=True)
    plan = K.matmul_plan(spec, isa)
    ep = O.Epilogue("float32", dynamic=True)
    lib = _build(K.matmul_kernel(spec, plan, (1, "seq", k), 0, ep))
    rng = np.random.default_rng(1)
    w, scale, fbias, consts = _constants(rng, k, n, plan, isa.offset("int8"))
    for rows in ROWS:
        x = rng.normal(size=(1, rows, k)).astype(np.float32)
        got = _run(lib, [x, *consts, np.array(1.0, np.float32)], (1, rows, n), "float32")
        rs = np.maximum(np.abs(x[0]).max(axis=1), np.float32(spec.eps)) / np.float32(127)
        xq = np.clip(np.round(x[0] / rs[:, None]), -128, 127).astype(np.int64)
        want = ep.numpy(xq @ w.astype(np.int64), 0, scale, fbias, rs[:, None])
        np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6, err_msg=f"rows={rows}")


# ---------------------------------------------------------------------------------------------
# Whole models


def _block_feeds(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, n, mb.TRANSFORMER["dim"])).astype(np.float32)
    return {"x": x, "mask": mb.causal_mask(seq=n)}


def _lower_stats(art) -> dict:
    rows = art.manifest["report"]["passes"]
    return next(r["stats"] for r in rows if r["pass"] == "lower-int8")


@pytest.fixture(scope="module")
def dynamic_builds(tmp_path_factory):
    """The block with a symbolic sequence (1..48) and its static builds at 16 and 33, dynamic
    per-row int8 (the transformer setting)."""
    tmp = tmp_path_factory.mktemp("int8_symbolic")
    model = mb.transformer_block(seq="seq")
    options = QuantOptions(mode="dynamic", granularity="row")

    def build(name, seq):
        return graphopt.compile(
            model,
            tmp / name,
            input_shapes={"x": (1, seq, mb.TRANSFORMER["dim"])},
            compression=[Int8(options)],
        )

    return model, build("symbolic", "1..48"), {n: build(f"s{n}", n) for n in (16, 33)}


def test_symbolic_int8_lowers_every_matmul(dynamic_builds):
    _model, sym, static = dynamic_builds
    stats = _lower_stats(sym)
    assert stats["left"] == 0
    assert stats["lowered_matmul"] == _lower_stats(static[16])["lowered_matmul"] > 0
    assert sym.manifest["dims"] == {"seq": {"min": 1, "max": 48}}


def test_symbolic_int8_matches_its_static_builds(dynamic_builds):
    """Same integer kernels, same row arithmetic: only the fp32 kernels' schedules differ."""
    _model, sym, static = dynamic_builds
    for n, art in static.items():
        feeds = _block_feeds(n)
        for got, want in zip(sym.run(feeds).values(), art.run(feeds).values()):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_symbolic_int8_close_to_onnxruntime_at_every_size(dynamic_builds):
    model, sym, _static = dynamic_builds
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 7, 48):
        feeds = _block_feeds(n)
        want = session.run(None, feeds)[0].reshape(n, -1)
        got = next(iter(sym.run(feeds).values())).reshape(n, -1)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.99, (n, cos.min())


def test_symbolic_report_counts_flops_at_the_example_size(dynamic_builds):
    _model, sym, static = dynamic_builds
    assert sym.manifest["report"]["flops"] == static[16].manifest["report"]["flops"] > 0


def test_static_int8_calibrates_on_samples_of_any_length(tmp_path):
    """Calibration samples 24 tokens long for a 1..48 build: ranges from them, kernels for
    every length."""
    model = mb.transformer_block(seq="seq")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 24, mb.TRANSFORMER["dim"])).astype(np.float32)
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=x, mask=np.stack([mb.causal_mask(seq=24)] * 6))
    art = graphopt.compile(
        model,
        tmp_path / "q",
        input_shapes={"x": (1, "1..48", mb.TRANSFORMER["dim"])},
        compression=[Int8(QuantOptions(calibration=str(cal)))],
    )
    assert _lower_stats(art)["left"] == 0
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (3, 24, 40):
        feeds = _block_feeds(n)
        want = session.run(None, feeds)[0].ravel()
        got = next(iter(art.run(feeds).values())).ravel()
        assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.99


def test_calibration_samples_outside_the_range_are_refused():
    spec = TensorSpec("x", (1, SymDim("seq", 2, 16), 8), "float32")
    feeds = batch_feeds({"x": np.zeros((3, 12, 8), np.float32)}, [spec])
    assert [f["x"].shape for f in feeds] == [(1, 12, 8)] * 3
    with pytest.raises(CalibrationError, match=r"expected \[N, seq:2..16, 8\]"):
        batch_feeds({"x": np.zeros((3, 20, 8), np.float32)}, [spec])


def test_symbolic_batch_convolutions_are_one_line(tmp_path):
    with pytest.raises(GraphoptError, match="lowers matmuls only") as info:
        graphopt.compile(
            mb.cnn(batch="N"),
            tmp_path / "q",
            input_shapes={"x": ("1..4", 3, 16, 16)},
            compression=[Int8(QuantOptions(mode="dynamic"))],
        )
    assert "\n" not in str(info.value)
