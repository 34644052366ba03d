"""fp32 convs over a symbolic image size get the conv rule's schedule, exact at every size.

Each model is compiled once with `--input-shape x=1,C,hw:8..40,hw` and run at three sizes
(one the nominal plan does not divide) against onnxruntime. The conv kernels must be
scheduled by the `conv` rule (its schedule replayed from the nominal size), not by the
row-wise fallback a kernel gets when the replay fails, and the Clip kernels that take the
image size as a scalar must convert to NHWC with the convs (no transposes between them).
The slow test does the same for MobileNetV2's layers (random weights).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from tests import model_builders as mb
from tests.model_builders import GraphBuilder, _value_info

SIZES = (8, 23, 40)


def _conv_model(channels: int, out: int, k: int, stride: int, group: int, pool: bool = False):
    """Conv (+bias) -> Clip(0, 6), as exported MobileNet layers are after BN folding; `pool`:
    then GlobalAveragePool, a window over the whole (symbolic) map."""
    g = GraphBuilder(seed=k * 10 + stride + group)
    y = g.conv("x", channels, out, k, group=group, pad=(k - 1) // 2, stride=stride)
    y = g.op("Clip", [y, g.const(np.float32(0.0)), g.const(np.float32(6.0))])
    if pool:
        y = g.op("GlobalAveragePool", [y])
    x = _value_info("x", [1, channels, "hw", "hw"])
    return g.model([x], [("y", y, [1, out, None, None])], "symbolic_conv")


CASES = {
    "pointwise": (32, 48, 1, 1, 1),
    "depthwise": (32, 32, 3, 1, 32),
    "depthwise_stride2": (32, 32, 3, 2, 32),
    "stem": (3, 16, 3, 2, 1),
}


def _stats(art, name: str) -> dict:
    return next(r["stats"] for r in art.manifest["report"]["passes"] if r["pass"] == name)


def _compile(tmp_path, model, channels: int):
    return graphopt.compile(model, tmp_path, input_shapes={"x": (1, channels, "hw:8..40", "hw")})


def _matches_onnxruntime(art, model, channels: int) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in SIZES:
        x = np.random.default_rng(size).standard_normal((1, channels, size, size))
        feeds = {"x": x.astype(np.float32)}
        got = next(iter(art.run(feeds).values()))
        want = session.run(None, feeds)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"size {size}")


@pytest.mark.parametrize("case", list(CASES))
def test_symbolic_image_size_conv_matches_onnxruntime(tmp_path, case):
    channels = CASES[case][0]
    model = _conv_model(*CASES[case])
    art = _compile(tmp_path, model, channels)
    schedule = _stats(art, "schedule-cpu")
    assert schedule["scheduled_conv"] == 1 and schedule["untouched"] == 0, schedule
    layout = _stats(art, "layout")
    assert layout["elementwise_raised"] == 2 and layout["transposes_left"] == 2, layout
    _matches_onnxruntime(art, model, channels)


def test_global_pool_over_symbolic_image_size_takes_the_window_rule(tmp_path):
    """Its window (the whole map) is symbolic: the replay must not unroll it."""
    model = _conv_model(32, 32, 1, 1, 1, pool=True)
    art = _compile(tmp_path, model, 32)
    schedule = _stats(art, "schedule-cpu")
    assert schedule["scheduled_window"] == 1 and schedule["scheduled_conv"] == 1, schedule
    _matches_onnxruntime(art, model, 32)


@pytest.mark.slow
def test_mobilenet_v2_layers_over_a_symbolic_image_size(tmp_path):
    """Every conv of MobileNetV2's layers takes the conv rule (none the row-wise fallback),
    and one build for 96..256 pixels matches onnxruntime at three sizes."""
    model = mb.mobilenet_v2_layers(size="hw")
    art = graphopt.compile(model, tmp_path, input_shapes={"x": (1, 3, "hw:96..256", "hw")})
    schedule = _stats(art, "schedule-cpu")
    assert schedule["scheduled_reduction"] == 0 and schedule["untouched"] == 0, schedule
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in (96, 161, 224):
        x = np.random.default_rng(size).standard_normal((1, 3, size, size))
        feeds = {"x": x.astype(np.float32)}
        got = next(iter(art.run(feeds).values()))
        np.testing.assert_allclose(got, session.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
