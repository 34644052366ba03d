"""The int8 probe graph computes the integer kernels' arithmetic: for any set of flags its
outputs equal, bit for bit, those of the artifact built with the matching skip list
(`equalize`, `bias-correction`, `quantize`, `lower-int8` and the host target's int8 kernels)."""

from __future__ import annotations

from pathlib import Path

import model_builders as mb
import numpy as np
import pytest

from graphopt.build import build_runner
from graphopt.compress.int8.calibrate import calibrate
from graphopt.compress.int8.equalize import KEY, equalize_scales, find_pairs, scaled_module
from graphopt.compress.int8.probe import ProbeRunner, Settings, probe_module
from graphopt.compress.int8.ranges import write_ranges
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import host_target

MOBILENET = Path.home() / ".cache/graphopt/models/mobilenet_v2.onnx"


def _o2(model):
    return run_passes(import_onnx(model).mod, instantiate(parse_pipeline("O2")))


def _static_ranges(mod, feeds, act_dtype="int8"):
    """Calibrated ranges with bias corrections after equalization, as compile makes them."""
    pairs = find_pairs(mod)
    found: dict = {"scales": {}}

    def equalize(first):
        scales = {
            p.consumer.name: equalize_scales(
                p, first[p.consumer.name]["channel_max"], first[p.consumer.name]["input"][1]
            )
            for p in pairs
        }
        found["scales"] = scales
        return scaled_module(mod, scales), scales

    ranges = calibrate(
        mod, feeds, "mse", act_dtype=act_dtype, bias_correction=True,
        equalize=equalize if pairs else None,
    )  # fmt: skip
    for name, k in found["scales"].items():
        ranges[name][KEY] = k.tolist()
    return ranges, found["scales"]


def _artifact(mod, settings: Settings, path: Path | None, skip) -> object:
    """The artifact compile builds for this skip list (the passes of `flow._Decided`)."""
    quant = {"mode": settings.mode, "act_dtype": settings.act_dtype}
    if settings.mode == "dynamic" and settings.granularity != "tensor":
        quant["granularity"] = settings.granularity
    extra = {"skip": ":".join(skip)} if skip else {}
    passes = []
    if path is not None:
        quant["ranges"] = str(path)
        passes += [make_pass("equalize", {"ranges": str(path)})]
        passes += [make_pass("bias-correction", {"ranges": str(path), **extra})]
    passes += [make_pass("quantize", {**quant, **extra})]
    passes += [make_pass("lower-int8", host_target().pass_options("lower-int8"))]
    return build_runner(run_passes(mod, passes))


def _assert_exact(probe: ProbeRunner, art, skip, feeds) -> None:
    flags = np.array([u.name not in skip for u in probe.probe.units], np.float32)
    for feed in feeds:
        for got, want in zip(probe.outputs(feed, flags), art(feed), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            differ = np.count_nonzero(got != want)
            assert differ == 0, f"skip {skip}: {differ} of {got.size} outputs differ"


def _images(n: int, seed: int, shape) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(n)]


@pytest.mark.parametrize("act_dtype", ["int8", "uint8"])
def test_residual_depthwise_block_matches_the_artifact(tmp_path, act_dtype):
    """Equalized pair, bias corrections, requantized and dequantized edges, the int8 residual
    add and its fp32 fallback: every skip list below changes which of them the kernels use."""
    mod = _o2(mb.expand_depthwise(residual=True))
    calib = [{"x": x[0]} for x in _images(16, 1, (1, 4, 10, 10))]
    ranges, scales = _static_ranges(mod, calib, act_dtype)
    assert scales, "the block has an equalization pair"
    settings = Settings(act_dtype=act_dtype)
    probe = ProbeRunner(probe_module(mod, settings), host_target())
    probe.configure(ranges, scales, settings)
    path = tmp_path / "ranges.json"
    write_ranges(path, ranges, "mse")
    feeds = _images(6, 3, (1, 4, 10, 10))
    skips = [(), ("add_0",), ("conv2d_0",), ("conv2d_2",), ("conv2d_1", "add_0")]
    if act_dtype == "uint8":
        skips = skips[:2]
    for skip in skips:
        _assert_exact(probe, _artifact(mod, settings, path, skip), skip, feeds)


@pytest.mark.parametrize(
    "mode, granularity", [("dynamic", "row"), ("dynamic", "tensor"), ("static", "tensor")]
)
def test_transformer_block_matches_the_artifact(tmp_path, mode, granularity):
    """Matmuls with per-row / per-tensor run-time scales (dynamic) or calibrated ones."""
    mod = _o2(mb.transformer_block())
    mask = mb.causal_mask()
    rng = np.random.default_rng(5)
    feeds = [[rng.normal(size=(1, 8, 32)).astype(np.float32), mask] for _ in range(4)]
    settings = Settings(mode, True, "int8", granularity)
    ranges, path = {}, None
    if mode == "static":
        ranges, _ = _static_ranges(mod, [{"x": x, "mask": m} for x, m in feeds])
        path = tmp_path / "ranges.json"
        write_ranges(path, ranges, "mse")
    probe = ProbeRunner(probe_module(mod, settings, taps=False), host_target())
    probe.configure(ranges, {}, settings)
    names = [u.name for u in probe.probe.units]
    for skip in [(), (names[0], names[4])]:
        _assert_exact(probe, _artifact(mod, settings, path, skip), skip, feeds[:2])


@pytest.mark.slow
def test_mobilenet_v2_matches_the_artifact(tmp_path):
    """A real model: 52 convs (17 equalized pairs), 10 residual joins, the classifier."""
    if not MOBILENET.exists():
        pytest.skip("mobilenet_v2.onnx not exported (bench/models/export.py)")
    mod = _o2(str(MOBILENET))
    name = mod["main"].params[0].name
    shape = (1, 3, 224, 224)
    ranges, scales = _static_ranges(mod, [{name: x[0]} for x in _images(4, 1, shape)])
    probe = ProbeRunner(probe_module(mod, Settings()), host_target())
    probe.configure(ranges, scales, Settings())
    path = tmp_path / "ranges.json"
    write_ranges(path, ranges, "mse")
    names = [u.name for u in probe.probe.units]
    for skip in [(), tuple(names[2::3])]:
        _assert_exact(probe, _artifact(mod, Settings(), path, skip), skip, _images(2, 3, shape))
