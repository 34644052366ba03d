"""The speed check: a layer whose int8 kernel is slower than its fp32 kernel stays fp32
(graphopt/compress/int8/speed.py, the decision in graphopt/compress/int8/flow.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tvm

from graphopt.compress.common.layers import find_layers
from graphopt.compress.int8.flow import QuantOptions, quantize_step
from graphopt.compress.int8.speed import _act, build_pairs, layer_shapes, time_pairs
from graphopt.frontend import import_onnx
from graphopt.pass_infra import registered_passes

DIGITS = "graphopt/models/digits_cnn.onnx"
DIGITS_EVAL = "graphopt/models/digits_eval.npz"

pytestmark = pytest.mark.skipif(
    "lower-int8" not in registered_passes(), reason="no integer kernels: nothing to time"
)


@pytest.fixture(scope="module")
def digits():
    """The digits CNN after -O2, as `compile` hands it to the quantization step."""
    from graphopt.pipeline import instantiate, parse_pipeline, run_passes
    from graphopt.target_infra import make_target

    imported = import_onnx(DIGITS)
    with make_target("x86", {}).tvm_target():
        mod = run_passes(imported.mod, instantiate(parse_pipeline("O2")))
    return SimpleNamespace(mod=mod, inputs=imported.inputs)


@pytest.fixture(scope="module")
def pairs(digits):
    return build_pairs(digits.mod)


def fake_timer(calls: list):
    """Runs each kernel once (they must work), then reports a fixed clock: int8 twice as slow
    as fp32 for depthwise convs and the first conv (one input channel), else 2x faster."""

    def timer(shape, fns):
        for fn in fns.values():
            fn()
        calls.append(shape)
        slow = shape.kind == "conv2d" and shape.w_shape[1] == 1
        return {"fp32": 1.0, "int8": 2.0 if slow else 0.5}

    return timer


def test_layer_shapes_say_where_tensors_stay_int8(digits):
    mod = digits.mod
    shapes = layer_shapes(mod, find_layers(mod["main"]))
    # conv2d_0 reads the model input (fp32: a quantize kernel first) and feeds conv2d_1 directly;
    # conv2d_1 feeds a pooling (fp32 output); the classifier matmul ends the model.
    assert not shapes["conv2d_0"].int8_input and shapes["conv2d_0"].requant
    assert shapes["conv2d_1"].int8_input and not shapes["conv2d_1"].requant
    assert (shapes["conv2d_0"].lo, shapes["conv2d_0"].hi) == (0.0, float("inf"))  # relu folded
    assert shapes["conv2d_2"].attrs[-1] == 32  # depthwise
    assert not shapes["matmul_0"].requant


def test_slower_int8_layers_stay_fp32_with_a_fake_clock(digits):
    calls: list = []
    opts = QuantOptions(DIGITS_EVAL, samples=8, sensitivity=False, speed_check=True)
    step = quantize_step(digits.mod, digits.inputs, opts, timer=fake_timer(calls))
    layers = {d["layer"]: d for d in step.manifest["layers"]}
    slow = {"conv2d_0", "conv2d_2"}  # the first conv and the depthwise one
    for name, d in layers.items():
        assert d["precision"] == ("fp32" if name in slow else "int8"), step.manifest["speed_check"]
        assert d["fp32_ms"] == 1.0 and d["int8_ms"] == (2.0 if name in slow else 0.5)
    assert {d["reason"] for d in layers.values() if "reason" in d} == {"int8 kernel slower"}
    assert sorted(step.manifest["speed_check"]["slower"]) == sorted(slow)
    assert len(calls) == 5  # every digits layer has its own shape
    quantize = step.passes[0]
    assert sorted(quantize.options.skip) == sorted(slow)
    assert "fp32 ms" in step.table and "2 layer(s) kept fp32" in step.table


def test_noise_margin(pairs):
    def near(shape, fns):  # convs 8% slower in int8 (noise), the matmul 12% (slower)
        return {"fp32": 1.0, "int8": 1.08 if shape.kind == "conv2d" else 1.12}

    timings = time_pairs(pairs, timer=near)
    assert [n for n, t in timings.items() if t.slower] == ["matmul_0"]
    assert timings["conv2d_0"].to_json()["int8_over_fp32"] == 1.08


def test_speed_check_off(digits):
    def never(shape, fns):
        raise AssertionError("the speed check is off")

    off = QuantOptions(DIGITS_EVAL, samples=4, sensitivity=False)  # off by default
    step = quantize_step(digits.mod, digits.inputs, off, timer=never)
    assert step.manifest["speed_check"]["skipped"].startswith("off")
    assert step.manifest["int8_layers"] == 5


def test_kernel_pairs_compute_the_same_layer(pairs):
    """What is timed is the layer: the int8 function (integer kernels, nothing left as
    fake-quant) agrees with the fp32 one up to the quantization error."""
    kp = pairs
    assert kp.lowered["lowered_conv2d"] == 4 and kp.lowered["lowered_matmul"] == 1
    assert kp.lowered["left"] == 0
    for key, (_, shape) in kp.pairs.items():
        x32, x8 = kp.inputs(key)
        act = _act(-4.0, 4.0)
        x_fp = x8.astype(np.float32) * act.scale if shape.int8_input else x32
        ref = kp.function(key, "fp32")(tvm.runtime.tensor(x_fp)).numpy()
        got = kp.function(key, "int8")(tvm.runtime.tensor(x8)).numpy()
        if shape.requant:
            assert got.dtype == np.int8
            got = got.astype(np.float32) * act.scale
            ref = np.clip(ref, -128 * act.scale, 127 * act.scale)
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6)
        assert err < 0.1, (key, shape, err)


def test_measured_on_this_machine(digits, pairs):
    """Real clock: every layer timed, positive medians, the decision is the margin's."""
    timings = time_pairs(pairs)
    assert sorted(timings) == sorted(ly.name for ly in find_layers(digits.mod["main"]))
    for t in timings.values():
        assert t.fp32_ms > 0 and t.int8_ms > 0
        assert t.slower == (t.ratio > 1.1)
        assert t.ratio == pytest.approx(t.int8_ms / t.fp32_ms, rel=0.5)  # pairs vs medians
