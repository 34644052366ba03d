"""Pruning patterns and SparseGPT on numpy weights: exact levels, mask shapes, and that the
OBS update beats magnitude on the output error it minimizes."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.compress.common.errors import CalibrationError
from graphopt.compress.prune.masks import magnitude
from graphopt.compress.prune.sparsegpt import output_error, prune_sparsegpt
from graphopt.compress.prune.spec import PruneSpec, parse_spec

K, N = 96, 40  # N no multiple of 16: a short last block


def _data(rows: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] and correlated inputs X [rows, K] of different scales (what OBS exploits)."""
    rng = np.random.default_rng(seed)
    mix = np.eye(K) + rng.standard_normal((K, K)) * 0.3
    x = rng.standard_normal((rows, K)) @ mix * np.exp(rng.standard_normal(K))
    return rng.standard_normal((K, N)).astype(np.float32), x


def _check_pattern(w: np.ndarray, spec: PruneSpec) -> None:
    zero = w == 0
    if spec.pattern == "unstructured":
        assert zero.sum() == round(spec.sparsity * w.size)
    elif spec.pattern == "nm":
        groups = zero.reshape(-1, spec.m, w.shape[1]).sum(axis=1)
        assert (groups == spec.n).all()
    else:
        b, d = spec.block, spec.depth
        # short last blocks
        padded = np.pad(zero, ((0, -w.shape[0] % d), (0, -w.shape[1] % b)), mode="edge")
        blocks = padded.reshape(padded.shape[0] // d, d, -1, b)
        whole = blocks.all(axis=(1, 3))
        assert (blocks.any(axis=(1, 3)) == whole).all(), "zeros must come in whole blocks"
        assert whole.sum() == round(spec.sparsity * whole.size)


SPECS = [
    parse_spec("unstructured=0.3"),
    parse_spec("unstructured=0.5"),
    parse_spec("2:4"),
    parse_spec("1:8"),
    parse_spec("block=0.7"),
    parse_spec("block=0.5", block=8),
    parse_spec("block=0.7", block="16x4"),  # the int8 sparse kernels' block
    parse_spec("block=0.5", block="8x2"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.text())
def test_magnitude_pattern_and_level(spec):
    w, _ = _data()
    pruned = magnitude(w, spec)
    _check_pattern(pruned, spec)
    kept = pruned != 0
    np.testing.assert_array_equal(pruned[kept], w[kept])  # survivors unchanged
    if spec.pattern == "unstructured":  # the smallest went
        assert np.abs(w[~kept]).max() <= np.abs(w[kept]).min()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.text())
def test_sparsegpt_pattern_level_and_error(spec):
    w, x = _data()
    h = x.T @ x / len(x)
    pruned = prune_sparsegpt(w, h, spec, damp=0.01)
    _check_pattern(pruned, spec)
    mag, obs = output_error(w, magnitude(w, spec), h), output_error(w, pruned, h)
    assert obs < 0.7 * mag, (obs, mag)


def test_sparsegpt_lazy_blocks_match_one_block():
    """The lazy block updates are an exact reordering: the same result in one block."""
    w, x = _data()
    h = x.T @ x / len(x)
    spec = parse_spec("2:4")
    a = prune_sparsegpt(w, h, spec, block=8)
    b = prune_sparsegpt(w, h, spec, block=K)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sparsegpt_dead_inputs():
    w, x = _data()
    x[:, :5] = 0  # inputs that never vary
    pruned = prune_sparsegpt(w, x.T @ x, parse_spec("unstructured=0.5"))
    _check_pattern(pruned, parse_spec("unstructured=0.5"))
    assert np.isfinite(pruned).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("unstructured=1.2", "between 0 and 1"),
        ("unstructured=0", "between 0 and 1"),
        ("block=x", "not a number"),
        ("4:2", "0 < N < M"),
        ("0:4", "0 < N < M"),
        ("half", "not a pruning spec"),
        ("macs=0.7", "not a pruning spec"),  # structured: the CLI routes it to compress/channels
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(CalibrationError, match=message):
        parse_spec(text)


@pytest.mark.parametrize(
    "block, message",
    [("0", "between 1 and"), ("16x3", "depth must be one of"), ("16y4", "use B or BxD")],
)
def test_bad_blocks(block, message):
    with pytest.raises(CalibrationError, match=message):
        parse_spec("block=0.5", block)


def test_block_text_names_both_sizes():
    assert parse_spec("block=0.7", "16X4").text() == "block16x4=0.7"
    assert parse_spec("block=0.7").text() == "block16x1=0.7"
