"""Symbolic dims on ARM: one aarch64 build of a transformer block with any sequence length in
its range, and of a CNN with any batch, run under qemu by the bundle's own runner and equal
onnxruntime at several sizes; the runner (io.txt) refuses sizes outside the range and a
symbolic dim two inputs disagree on, in one line."""

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
