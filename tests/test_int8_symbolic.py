"""int8 with symbolic dims: one build's integer kernels run every row count or batch in range.

The kernels are checked against numpy at several row counts (one build); a transformer block
compiled with a symbolic sequence and `--quantize int8` lowers every matmul to the integer
kernels, matches its static int8 builds at the same sizes, and stays close to onnxruntime
fp32; calibration takes samples of any length in range and refuses others. A CNN with a
symbolic batch lowers its convolutions too (its kernels loop over the batch), checked
against its static builds, and so does one with a symbolic height and width (its NHWC conv
kernels take the sizes from the input's shape).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt import _tvm
from graphopt import int8_ops as O
from graphopt.compress.common.data import batch_feeds
from graphopt.compress.common.errors import CalibrationError
from graphopt.compress.int8.flow import QuantOptions
from graphopt.compress.int8.method import Int8
from graphopt.frontend import SymDim, TensorSpec
from graphopt.targets.cpu.int8 import depthwise_nhwc as DW
from graphopt.targets.cpu.int8 import kernels as K
from tests import model_builders as mb
from tests.int8_kernel_tools import build_kernel, padded
from tests.int8_kernel_tools import call_kernel as _run
from tests.int8_kernel_tools import random_ints as _ints

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif("avx2" not in _tvm.host_cpu_features(), reason="needs AVX2"),
]

ROWS = (1, 5, 37)  # one row, a part of a register tile, several tiles and a tail


def _build(func):
    return build_kernel(func, "znver3")


def _constants(rng, k, n, plan, shift):
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    corr = -shift * w.astype(np.int64).sum(0)
    scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    fbias = rng.normal(size=n).astype(np.float32)

    def pad(v, dtype):
        return padded(v, plan.n_pad, dtype)

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


# ---------------------------------------------------------------------------------------------
# A symbolic batch: the convolution kernels loop over it


def test_depthwise_nhwc_kernel_exact_at_every_batch():
    isa = K.ISAS["avx2"]
    spec = O.ConvSpec("N", 12, 9, 11, 12, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 12, "int8")
    ep = O.Epilogue("int8", zp=-4, lo=-4.0, hi=90.0)
    lib = _build(DW.depthwise_nhwc_kernel(spec, isa, -9, ep))
    rng = np.random.default_rng(2)
    cp = DW.channel_pad(spec.cout, isa)
    w = rng.integers(-127, 128, (spec.cout, 1, 3, 3)).astype(np.int8)
    corr = rng.integers(-1000, 1000, spec.cout).astype(np.int32)
    scale = rng.uniform(0.001, 0.01, spec.cout).astype(np.float32)

    consts = [padded(w.reshape(spec.cout, -1).T, cp), padded(corr, cp), padded(scale, cp)]
    oh, ow = spec.out_hw
    for batch in (1, 3):
        x = _ints(rng, (batch, 12, 9, 11), "int8")
        args = [x.transpose(0, 2, 3, 1), *consts, np.zeros(cp, np.float32)]
        got = _run(lib, args, (batch, oh, ow, 12), "int8")
        static = dataclasses.replace(spec, batch=batch)
        c4 = (1, -1, 1, 1)
        acc = O.reference_conv2d(x, w, static, -9)
        want = ep.numpy(acc, corr.reshape(c4), scale.reshape(c4), 0).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(got, want, err_msg=f"batch={batch}")


def test_add_kernel_exact_at_every_batch():
    ma, mb_, shift = O.add_multipliers(0.0473, 0.0219, 0.0617)
    ep = O.Epilogue("int8", zp=-2)
    spec = O.AddSpec(("N", 5, 7, 24), "int8", "int8", 3, -7, ma, mb_, shift, ep)
    lib = _build(K.add_kernel(spec))
    rng = np.random.default_rng(4)
    for batch in (1, 3):
        shape = (batch, 5, 7, 24)
        a, b = _ints(rng, shape, "int8"), _ints(rng, shape, "int8")
        static = dataclasses.replace(spec, shape=shape)
        got = _run(lib, [a, b], shape, "int8")
        np.testing.assert_array_equal(got, O.reference_add(a, b, static), err_msg=f"{batch}")


def _ort(model, feeds) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _image_feeds(n: int, channels: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {"x": rng.standard_normal((n, channels, size, size)).astype(np.float32)}


@pytest.mark.parametrize(
    ("name", "channels", "size", "lowered", "batches"),
    [
        ("cnn", 3, 16, {"lowered_conv2d": 2}, (1, 3)),  # RGB stem, window conv, NHWC pool
        ("expand_depthwise", 4, 10, {"lowered_conv2d": 3}, (3,)),  # equalized depthwise
    ],
)
def test_symbolic_batch_cnn_runs_its_static_int8_kernels(
    tmp_path, name, channels, size, lowered, batches
):
    """Static int8 (calibrated, equalized, bias-corrected) with a batch of 1..4: every conv
    lowered as in the static builds, and their outputs."""
    model = getattr(mb, name)(batch="N")
    cal = tmp_path / "cal.npz"
    rng = np.random.default_rng(9)
    np.savez(cal, x=rng.standard_normal((6, channels, size, size)).astype(np.float32))

    def build(key, batch):
        return graphopt.compile(
            model,
            tmp_path / key,
            input_shapes={"x": (batch, channels, size, size)},
            compression=[Int8(QuantOptions(calibration=str(cal)))],
        )

    sym = build("symbolic", "1..4")
    stats = _lower_stats(sym)
    assert stats["left"] == 0 and {k: stats[k] for k in lowered} == lowered
    for n in batches:
        feeds = _image_feeds(n, channels, size)
        static = build(f"s{n}", n)
        assert _lower_stats(static) == stats
        got = next(iter(sym.run(feeds).values()))
        want = next(iter(static.run(feeds).values()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_residual_joins_found_with_a_symbolic_batch():
    """A join's operands are compared by shape, a symbolic batch by name: the quantize pass
    makes the same int8 adds as for a static batch."""
    from graphopt.compress.common.layers import find_joins
    from graphopt.frontend import import_onnx

    static = import_onnx(mb.expand_depthwise(), {"x": (1, 4, 10, 10)})
    symbolic = import_onnx(mb.expand_depthwise(batch="N"), {"x": ("1..4", 4, 10, 10)})
    assert len(find_joins(symbolic.mod["main"])) == len(find_joins(static.mod["main"])) == 1


# ---------------------------------------------------------------------------------------------
# A symbolic height and width: the NHWC conv kernels compute the output size at run time


def test_depthwise_nhwc_kernel_exact_at_every_image_size():
    isa = K.ISAS["avx2"]
    ep = O.Epilogue("int8", zp=-4, lo=-4.0, hi=90.0)
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (12, 1, 3, 3)).astype(np.int8)
    corr = rng.integers(-1000, 1000, 12).astype(np.int32)
    scale = rng.uniform(0.001, 0.01, 12).astype(np.float32)
    cp = DW.channel_pad(12, isa)
    consts = [padded(w.reshape(12, -1).T, cp), padded(corr, cp), padded(scale, cp)]
    for stride in (1, 2):
        spec = O.ConvSpec(1, 12, "H", "W", 12, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), 12,
                          "int8")  # fmt: skip
        lib = _build(DW.depthwise_nhwc_kernel(spec, isa, -9, ep))
        for h, wd in ((9, 11), (14, 5), (3, 17)):
            static = dataclasses.replace(spec, height=h, width=wd)
            x = _ints(rng, (1, 12, h, wd), "int8")
            args = [x.transpose(0, 2, 3, 1), *consts, np.zeros(cp, np.float32)]
            got = _run(lib, args, (1, *static.out_hw, 12), "int8")
            c4 = (1, -1, 1, 1)
            acc = O.reference_conv2d(x, w, static, -9)
            want = ep.numpy(acc, corr.reshape(c4), scale.reshape(c4), 0).transpose(0, 2, 3, 1)
            np.testing.assert_array_equal(got, want, err_msg=f"stride {stride}, {h}x{wd}")


def test_window_conv_kernel_exact_at_every_image_size():
    """A 3x3 stride-2 conv over NHWC as the matmul over windows, one build for any size."""
    from graphopt.targets.cpu.int8 import materialize as M

    isa = K.ISAS["avx2"]
    ep = O.Epilogue("int8", zp=3, lo=-128.0, hi=127.0)
    spec = O.ConvSpec(1, 8, "H", "W", 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, "int8")
    func, pack = M.build(O.Recipe("conv2d", spec, -5, ep, "NHWC"), isa)
    lib = _build(func.with_attr("global_symbol", "main"))
    rng = np.random.default_rng(6)
    w = rng.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8)
    corr = rng.integers(-1000, 1000, 16).astype(np.int32)
    scale = rng.uniform(0.001, 0.01, 16).astype(np.float32)
    # the op adds its corr to sum(x * w) (padding reads the zero point -5), the reference
    # sums (x + 5) * w: sum(x * w) = reference - 5 * sum(w), so corr = c + 5 * sum(w)
    natural = (corr + 5 * w.reshape(16, -1).astype(np.int64).sum(1)).astype(np.int32)
    consts = pack([w, natural, scale, np.zeros(16, np.float32)])
    for h, wd in ((7, 7), (12, 9), (4, 15)):
        static = dataclasses.replace(spec, height=h, width=wd)
        x = _ints(rng, (1, 8, h, wd), "int8")
        got = _run(lib, [x.transpose(0, 2, 3, 1), *consts], (1, *static.out_hw, 16), "int8")
        c4 = (1, -1, 1, 1)
        acc = O.reference_conv2d(x, w, static, -5)
        want = ep.numpy(acc, corr.reshape(c4), scale.reshape(c4), 0).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(got, want, err_msg=f"{h}x{wd}")


@pytest.mark.parametrize(
    ("name", "kwargs", "channels", "lowered"),
    [
        ("cnn", {}, 3, {"lowered_conv2d": 2}),  # RGB stem, window conv, NHWC pool
        ("expand_depthwise", {}, 4, {"lowered_conv2d": 3}),  # equalized depthwise, residual
        ("expand_depthwise", {"stride": 2}, 4, {"lowered_conv2d": 3}),  # strided depthwise
    ],
)
def test_symbolic_image_size_cnn_runs_its_static_int8_kernels(
    tmp_path, name, kwargs, channels, lowered
):
    """Static int8 with a symbolic height and width (one build for 8..24 pixels): every conv
    lowered as in the static build calibrated on the same 12-pixel samples, and its outputs
    at 12; at other sizes close to onnxruntime fp32."""
    model = getattr(mb, name)(size="hw", **kwargs)
    cal = tmp_path / "cal.npz"
    rng = np.random.default_rng(9)
    np.savez(cal, x=rng.standard_normal((6, channels, 12, 12)).astype(np.float32))

    def build(key, size):
        return graphopt.compile(
            model,
            tmp_path / key,
            input_shapes={"x": (1, channels, size, "hw" if isinstance(size, str) else size)},
            compression=[Int8(QuantOptions(calibration=str(cal)))],
        )

    sym, static = build("symbolic", "8..24"), build("static", 12)
    stats = _lower_stats(sym)
    assert stats["left"] == 0 and {k: stats[k] for k in lowered} == lowered
    assert _lower_stats(static) == stats, (_lower_stats(static), stats)
    feeds = _image_feeds(1, channels, 12)
    got, want = (next(iter(a.run(feeds).values())) for a in (sym, static))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for size in (8, 17, 24):
        feeds = _image_feeds(1, channels, size)
        got = next(iter(sym.run(feeds).values()))
        ref = _ort(model, feeds)[0]
        assert got.shape == ref.shape
        cos = float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref)))
        assert cos > 0.99, (size, cos)
