"""Symbolic dims on ARM: one aarch64 build of a transformer block with any sequence length in
its range, and of a CNN with any batch or image size (fp32 and int8), run under qemu by the
bundle's own runner and equal onnxruntime (int8: the x86 build) at several sizes; the runner
(io.txt) refuses sizes outside the range and a symbolic dim two inputs disagree on, in one
line."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from aarch64_tools import needs_aarch64_tools

import graphopt
from graphopt import bundle
from graphopt.bundle import BundleError
from tests import model_builders as mb

pytestmark = [pytest.mark.arm, pytest.mark.slow, needs_aarch64_tools]


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _block_feeds(n: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(n).standard_normal((1, n, mb.TRANSFORMER["dim"]))
    return {"x": x.astype(np.float32), "mask": mb.causal_mask(seq=n)}


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    model = mb.transformer_block(seq="seq")
    out = tmp_path_factory.mktemp("arm_sym") / "block"
    art = graphopt.compile(model, out, target="arm", input_shapes={"x": (1, "1..40", 32)})
    return model, art


def test_io_spec_names_the_range(block):
    _, art = block
    io = (art.directory / "io.txt").read_text().splitlines()
    assert any(line.startswith("input <f4 3 1 seq=1..40 32 x") for line in io)


@pytest.mark.parametrize("n", [1, 7, 40])
def test_transformer_any_length_on_arm(block, n):
    model, art = block
    feeds = _block_feeds(n)
    got = bundle.run_emulated(art.directory, feeds)
    for name, want in _ort(model, feeds).items():
        assert got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4)


def test_runner_rejects_out_of_range_and_disagreeing_dims(block):
    _, art = block
    with pytest.raises(BundleError, match=r"dim 1 \(seq\) is 41, outside the range 1..40"):
        bundle.run_emulated(art.directory, _block_feeds(41))
    feeds = {"x": _block_feeds(5)["x"], "mask": mb.causal_mask(seq=6)}
    with pytest.raises(BundleError, match=r"is 6, but another input has seq=5"):
        bundle.run_emulated(art.directory, feeds)


def test_cnn_any_batch_on_arm(tmp_path):
    model = mb.cnn(batch="N")
    art = graphopt.compile(
        model, tmp_path / "cnn", target="arm", input_shapes={"x": ("1..4", 3, 16, 16)}
    )
    for n in (1, 3):
        feeds = {"x": np.random.default_rng(n).standard_normal((n, 3, 16, 16)).astype(np.float32)}
        got = bundle.run_emulated(art.directory, feeds)
        for name, want in _ort(model, feeds).items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4)


def _x86_and_rpi5(tmp_path, method: list):
    """The transformer block with a sequence range 1..40 compressed by `method`, built for
    this host and for a Raspberry Pi 5."""
    model, shapes = mb.transformer_block(seq="seq"), {"x": (1, "1..40", 32)}
    x86 = graphopt.compile(model, tmp_path / "x86", input_shapes=shapes, compression=method)
    arm = graphopt.compile(
        model,
        tmp_path / "arm",
        target="arm",
        target_options={"board": "rpi5"},
        input_shapes=shapes,
        compression=method,
    )
    return x86, arm


def test_symbolic_int8_transformer_on_rpi5_matches_x86(tmp_path):
    """Dynamic per-row int8 with a sequence range: the rpi5 build's sdot kernels take any
    length and give the x86 symbolic build's numbers under qemu (the int8 sums are exact; the
    fp32 layer norms and softmax sum 4 NEON lanes against 8 AVX2 lanes: 1e-5)."""
    from graphopt.compress.int8.flow import QuantOptions
    from graphopt.compress.int8.method import Int8

    method = [Int8(QuantOptions(mode="dynamic", granularity="row"))]
    x86, arm = _x86_and_rpi5(tmp_path, method)
    lowered = next(r for r in arm.manifest["report"]["passes"] if r["pass"] == "lower-int8")
    assert lowered["stats"]["lowered_matmul"] > 0 and lowered["stats"]["left"] == 0
    for n in (3, 29):
        got = bundle.run_emulated(arm.directory, _block_feeds(n), cpu="cortex-a76")
        for name, want in x86.run(_block_feeds(n)).items():
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)


def test_symbolic_int4_transformer_on_rpi5_matches_x86(tmp_path):
    """W4A8 with a sequence range: the rpi5 build's sdot kernels (panels decoded into q - z
    words, or decoded at each load for one row tile) take any length and give the x86
    symbolic build's (VNNI) numbers under qemu (the integer sums are exact)."""
    from graphopt.compress.int4.method import Int4, Int4Options

    x86, arm = _x86_and_rpi5(tmp_path, [Int4(Int4Options(method="rtn"))])
    stats = next(r for r in arm.manifest["report"]["passes"] if r["pass"] == "materialize-int4")
    assert stats["stats"]["isa_sdot"] == 1  # the scheme the kernels use
    assert stats["stats"]["w4a8_kernels"] == stats["stats"]["kernels"] > 0
    for n in (1, 29):
        got = bundle.run_emulated(arm.directory, _block_feeds(n), cpu="cortex-a76")
        for name, want in x86.run(_block_feeds(n)).items():
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "kwargs", "channels", "shape", "sizes"),
    [
        ("cnn", {"size": "hw"}, 3, (1, 3, "8..24", "hw"), [(1, 8), (1, 17)]),
        ("expand_depthwise", {"size": "hw", "stride": 2}, 4, (1, 4, "8..24", "hw"), [(1, 13)]),
        ("cnn", {"batch": "N"}, 3, ("1..4", 3, 16, 16), [(3, 16)]),
    ],
)
def test_symbolic_int8_cnn_on_arm_matches_x86(tmp_path, name, kwargs, channels, shape, sizes):
    """ARM's own int8 convs are NCHW kernels with static shapes; a symbolic batch or image
    size takes the NHWC int8 kernels instead (the x86 ones, built with sdot). Under qemu the
    rpi5 build gives the x86 symbolic build's numbers (int8 sums exact; fp32 parts sum in
    other lane counts) and stays close to onnxruntime fp32."""
    from graphopt.compress.int8.flow import QuantOptions
    from graphopt.compress.int8.method import Int8

    model = getattr(mb, name)(**kwargs)
    cal = tmp_path / "cal.npz"
    rng = np.random.default_rng(9)
    np.savez(cal, x=rng.standard_normal((6, channels, 16, 16)).astype(np.float32))
    method = [Int8(QuantOptions(calibration=str(cal)))]
    x86 = graphopt.compile(model, tmp_path / "x86", input_shapes={"x": shape}, compression=method)
    arm = graphopt.compile(
        model,
        tmp_path / "arm",
        target="arm",
        target_options={"board": "rpi5"},
        input_shapes={"x": shape},
        compression=method,
    )
    lowered = next(r for r in arm.manifest["report"]["passes"] if r["pass"] == "lower-int8")
    assert lowered["stats"]["lowered_conv2d"] >= 2 and lowered["stats"]["left"] == 0
    for n, size in sizes:
        x = np.random.default_rng(size).standard_normal((n, channels, size, size))
        feeds = {"x": x.astype(np.float32)}
        got = next(iter(bundle.run_emulated(arm.directory, feeds, cpu="cortex-a76").values()))
        want = next(iter(x86.run(feeds).values()))
        ref = next(iter(_ort(model, feeds).values()))
        assert got.shape == want.shape == ref.shape
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        cos = float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref)))
        assert cos > 0.99, (size, cos)
