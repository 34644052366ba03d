"""Bias correction (graphopt/compress/int8/bias_correction.py): the closed-form channel means,
and the pass removing the mean quantization error of a depthwise layer on a known distribution."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.build import build_runner
from graphopt.compress.common.layers import find_layers
from graphopt.compress.int8.bias_correction import KEY, InputMean, conv2d_channel_mean
from graphopt.compress.int8.calibrate import calibrate
from graphopt.compress.int8.ranges import write_ranges
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.testing import run_module


class Attrs:
    def __init__(self, strides, padding, dilation, groups):
        self.strides, self.padding, self.dilation, self.groups = strides, padding, dilation, groups


def conv_np(x, w, strides, padding, dilation, groups):
    """Direct NCHW/OIHW conv2d of one image x [C, H, W] (float64 reference)."""
    c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (padding[0], padding[2]), (padding[1], padding[3])))
    oh = (h + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((o, oh, ow))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                r, q = i * strides[0], j * strides[1]
                patch = xp[
                    g * cg : (g + 1) * cg,
                    r : r + dilation[0] * (kh - 1) + 1 : dilation[0],
                    q : q + dilation[1] * (kw - 1) + 1 : dilation[1],
                ]
                out[oc, i, j] = np.sum(patch * w[oc])
    return out


@pytest.mark.parametrize(
    "cin, cout, k, strides, padding, dilation, groups",
    [
        (3, 5, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
        (6, 6, 3, (2, 2), (0, 1, 1, 0), (1, 1), 6),  # depthwise, asymmetric padding
        (4, 6, 3, (1, 2), (2, 2, 2, 2), (2, 1), 2),  # groups, dilation
        (5, 7, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ],
)
def test_channel_mean_is_the_mean_of_the_conv(cin, cout, k, strides, padding, dilation, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((cin, 9, 7)) + 0.5
    w = rng.standard_normal((cout, cin // groups, k, k))
    ref = conv_np(x, w, strides, padding, dilation, groups).mean(axis=(1, 2))
    got = conv2d_channel_mean(x, w, Attrs(strides, padding, dilation, groups))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_input_mean_over_samples():
    m = InputMean("matmul")
    a, b = np.ones((1, 4, 3)), np.zeros((1, 2, 3))
    m.add(a)
    m.add(b)
    np.testing.assert_allclose(m.mean, np.full(3, 4 / 6))


def depthwise_model(bias: bool = True) -> onnx.ModelProto:
    """x [1, 16, 10, 10] -> depthwise 3x3 conv (pad 1) [+ bias] -> y."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((16, 1, 3, 3)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"))
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], group=16, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node],
        "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def skewed(rng, n):
    """Post-relu-like activations with a long tail: the mse range clips the tail (biased)."""
    return [rng.exponential(1.0, (1, 16, 10, 10)).astype(np.float32) for _ in range(n)]


def _errors(mod, feeds, ranges_path, correct: bool, skip: str = ""):
    opts = {"ranges": str(ranges_path), **({"skip": skip} if skip else {})}
    passes = [make_pass("bias-correction", opts)] if correct else []
    passes.append(make_pass("quantize", opts))
    q = mod
    for p in passes:
        q = p.run(q).module
    run_ref, run_q = build_runner(mod), build_runner(q)
    return np.stack([run_q([f])[0] - run_ref([f])[0].astype(np.float64) for f in feeds])


@pytest.mark.parametrize("bias", [True, False])
def test_correction_removes_the_mean_error_on_held_out_samples(tmp_path, bias):
    mod = import_onnx(depthwise_model(bias)).mod
    rng = np.random.default_rng(0)
    calib, held_out = skewed(rng, 24), skewed(rng, 24)
    ranges = calibrate(mod, [{"x": x} for x in calib], "mse", bias_correction=True)
    path = tmp_path / "r.json"
    write_ranges(path, ranges, "mse")
    assert len(json.loads(path.read_text())["layers"]["conv2d_0"][KEY]) == 16

    plain = _errors(mod, held_out, path, correct=False)
    fixed = _errors(mod, held_out, path, correct=True)
    mean_plain = np.abs(plain.mean(axis=(0, 1, 3, 4)))  # per channel
    mean_fixed = np.abs(fixed.mean(axis=(0, 1, 3, 4)))
    # The uncorrected error is biased (weight rounding on a non-zero-mean input, and the
    # clipped tail); the correction leaves a small fraction of it, and the squared error falls.
    assert mean_plain.mean() > 3 * mean_fixed.mean(), (mean_plain, mean_fixed)
    assert (fixed**2).mean() < (plain**2).mean()
    # skip= leaves that layer alone (the flow passes the layers kept fp32).
    skipped = make_pass("bias-correction", {"ranges": str(path), "skip": "conv2d_0"}).run(mod)
    assert not skipped.modified


def test_pass_folds_into_the_bias_or_adds_one(tmp_path):
    from graphopt.pipeline import instantiate, parse_pipeline, run_passes

    for bias in (True, False):
        # after -O2 (as compile runs it) the bias is one constant [1, C, 1, 1]
        mod = run_passes(import_onnx(depthwise_model(bias)).mod, instantiate(parse_pipeline("O2")))
        layer = find_layers(mod["main"])[0]
        c = np.arange(16, dtype=np.float32)
        ranges = {
            layer.name: {
                "kind": "conv2d",
                "weight_shape": layer.weight_shape,
                "input": [0.0, 1.0],
                KEY: c.tolist(),
            }
        }
        path = tmp_path / f"r{bias}.json"
        write_ranges(path, ranges, "minmax")
        result = make_pass("bias-correction", {"ranges": str(path)}).run(mod)
        assert result.stats["corrected"] == 1 and result.stats["bias_folded"] == int(bias)
        x = np.random.default_rng(1).standard_normal((1, 16, 10, 10)).astype(np.float32)
        ref = run_module(mod, [x])[0]
        got = run_module(result.module, [x])[0]
        np.testing.assert_allclose(got, ref - c.reshape(1, -1, 1, 1), rtol=1e-5, atol=1e-5)
