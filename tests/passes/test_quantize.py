"""quantize: QDQ structure, does-not-fire, skip, honest `modified`, numerics vs numpy fake-quant."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R_op

from graphopt.compress.common.errors import CalibrationError
from graphopt.compress.int8.qdq import (
    act_qparams,
    conv2d_qdq_module,
    dequant_weight_np,
    fake_quant_np,
    matmul_qdq_module,
    weight_qparams,
)
from graphopt.compress.int8.ranges import write_ranges
from graphopt.pass_infra import make_pass
from graphopt.testing import apply_checked, check_no_change, check_rewrite, run_module

RNG = np.random.default_rng(0)


def fp32_module(x_shape, make_op, bias=None, activation=None, const_weight=True):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(tuple(x_shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(make_op(x))
            if bias is not None:
                y = bb.emit(R_op.add(y, relax.const(bias)))
            if activation == "relu":
                y = bb.emit(R_op.nn.relu(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def conv_np(x, w, strides=(1, 1), padding=(0, 0, 0, 0), groups=1):
    """Direct NCHW/OIHW conv2d in float64 (the reference for small shapes)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), padding[0::2], padding[1::2]))
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    oh, ow = (h - kh) // strides[0] + 1, (wd - kw) // strides[1] + 1
    out = np.zeros((n, o, oh, ow))
    per = o // groups
    for oc in range(o):
        g = oc // per
        xs = x[:, g * ci : (g + 1) * ci]
        for i in range(oh):
            for j in range(ow):
                patch = xs[
                    :, :, i * strides[0] : i * strides[0] + kh, j * strides[1] : j * strides[1] + kw
                ]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    return out


def ranges_file(tmp_path, layers):
    path = tmp_path / "ranges.json"
    write_ranges(path, layers, "minmax")
    return str(path)


CONV_CASES = [
    # x shape, w shape, strides, padding, groups
    ((1, 3, 9, 7), (5, 3, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    ((2, 4, 10, 10), (4, 1, 3, 3), (2, 2), (1, 0, 1, 0), 4),  # depthwise, stride 2, odd pads
    ((1, 6, 5, 5), (4, 3, 1, 1), (1, 1), (0, 0, 0, 0), 2),  # grouped 1x1
]


@pytest.mark.parametrize("x_shape, w_shape, strides, padding, groups", CONV_CASES)
def test_conv2d_structure_and_numerics(tmp_path, x_shape, w_shape, strides, padding, groups):
    w = RNG.standard_normal(w_shape).astype(np.float32)
    bias = RNG.standard_normal(w_shape[0]).astype(np.float32).reshape(1, -1, 1, 1)

    def conv(x):
        return R_op.nn.conv2d(x, relax.const(w), strides=strides, padding=padding, groups=groups)

    before = fp32_module(x_shape, conv, bias, "relu")
    lo, hi = -2.0, 2.5
    rf = ranges_file(tmp_path, {"conv2d_0": {"input": [lo, hi], "weight_shape": list(w_shape)}})
    act = act_qparams(lo, hi, "int8")
    expected = conv2d_qdq_module(
        x_shape,
        w,
        act,
        bias=bias.ravel(),
        strides=strides,
        padding=padding,
        groups=groups,
        activation="relu",
    )
    result = check_rewrite(make_pass("quantize", {"ranges": rf}), before, expected)
    assert dict(result.stats) == {"quantized": 1, "skipped": 0}

    x = RNG.uniform(lo, hi, x_shape).astype(np.float32)
    got = run_module(result.module, [x])[0]
    wq, s_w = weight_qparams(w, 0)
    ref = np.maximum(
        conv_np(fake_quant_np(x, act), dequant_weight_np(wq, s_w, 0), strides, padding, groups)
        + bias,
        0,
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # exactly the fake-quant math
    fp32 = np.maximum(conv_np(x, w, strides, padding, groups) + bias, 0)
    # vs fp32: inputs inside [lo, hi], so only rounding error: at most s/2 per activation and
    # s_w/2 per weight, summed over the taps.
    taps = np.prod(w_shape[1:])
    bound = taps * (act.scale / 2 * np.abs(w).max() + np.abs(s_w).max() / 2 * max(-lo, hi))
    assert np.abs(got - fp32).max() <= bound
    assert np.abs(got - fp32).max() / np.abs(fp32).max() < 0.02


def test_matmul_static_and_per_tensor(tmp_path):
    w = RNG.standard_normal((24, 7)).astype(np.float32)
    before = fp32_module((3, 5, 24), lambda x: R_op.matmul(x, relax.const(w)))
    rf = ranges_file(tmp_path, {"matmul_0": {"input": [-3.0, 3.0], "weight_shape": [24, 7]}})
    act = act_qparams(-3.0, 3.0, "uint8")
    expected = matmul_qdq_module((3, 5, 24), w, act, per_channel=False)
    opts = {"ranges": rf, "per_channel": "false", "act_dtype": "uint8"}
    result = check_rewrite(make_pass("quantize", opts), before, expected)
    x = RNG.standard_normal((3, 5, 24)).astype(np.float32)
    wq, s = weight_qparams(w, 1, per_channel=False)
    assert np.ndim(s) == 0
    ref = fake_quant_np(x, act) @ dequant_weight_np(wq, s, 1)
    np.testing.assert_allclose(run_module(result.module, [x])[0], ref, rtol=1e-5, atol=1e-5)


def test_dynamic_mode_quantizes_at_run_time():
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    before = fp32_module((4, 16), lambda x: R_op.matmul(x, relax.const(w)))
    expected = matmul_qdq_module((4, 16), w, None)
    result = check_rewrite(make_pass("quantize", {"mode": "dynamic"}), before, expected)
    wq, s_w = weight_qparams(w, 1)
    for scale in (0.01, 100.0):  # the run-time scale follows the input's own range
        x = (RNG.standard_normal((4, 16)) * scale).astype(np.float32)
        s = np.float32(np.abs(x).max()) / np.float32(127)
        xq = np.clip(np.round(x / s), -128, 127) * s
        ref = xq @ dequant_weight_np(wq, s_w, 1)
        got = run_module(result.module, [x])[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        fp32 = x @ w
        assert np.abs(got - fp32).max() / np.abs(fp32).max() < 0.03


def test_dynamic_per_row_scales():
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    before = fp32_module((1, 6, 16), lambda x: R_op.matmul(x, relax.const(w)))
    result = apply_checked(make_pass("quantize", {"mode": "dynamic", "granularity": "row"}), before)
    x = RNG.standard_normal((1, 6, 16)).astype(np.float32)
    x[0, 2] *= 1000.0  # one outlier row must not coarsen the others
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-8) / np.float32(127)
    xq = np.clip(np.round(x / s), -128, 127) * s
    wq, s_w = weight_qparams(w, 1)
    ref = xq @ dequant_weight_np(wq, s_w, 1)
    got = run_module(result.module, [x])[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    fp32 = x @ w
    rows = [0, 1, 3, 4, 5]
    err = np.abs(got - fp32)[0, rows].max() / np.abs(fp32[0, rows]).max()
    assert err < 0.03


def test_does_not_fire_without_constant_weights_or_when_skipped(tmp_path):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 6, 6), "float32"))
    w = relax.Var("w", relax.TensorType((4, 3, 3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(R_op.nn.conv2d(x, w)))
        bb.emit_func_output(out)
    r = check_no_change(make_pass("quantize", {"mode": "dynamic"}), bb.get())
    assert dict(r.stats) == {"quantized": 0, "skipped": 0}

    wc = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    mod = fp32_module((1, 3, 6, 6), lambda x: R_op.nn.conv2d(x, relax.const(wc)))
    rf = ranges_file(tmp_path, {"conv2d_0": {"input": [0, 1], "weight_shape": [4, 3, 3, 3]}})
    r = check_no_change(make_pass("quantize", {"ranges": rf, "skip": "conv2d_0"}), mod)
    assert dict(r.stats) == {"quantized": 0, "skipped": 1}
    empty = ranges_file(tmp_path, {})
    assert dict(check_no_change(make_pass("quantize", {"ranges": empty}), mod).stats) == {
        "quantized": 0,
        "skipped": 1,
    }


def test_skip_one_of_two_layers(tmp_path):
    w1 = RNG.standard_normal((8, 8)).astype(np.float32)
    w2 = RNG.standard_normal((8, 8)).astype(np.float32)
    mod = fp32_module(
        (2, 8), lambda x: R_op.matmul(R_op.matmul(x, relax.const(w1)), relax.const(w2))
    )
    # Nested calls are normalized into two bindings: matmul_0 (inner), matmul_1 (outer).
    mod = relax.transform.Normalize()(mod)
    ranges = {f"matmul_{i}": {"input": [-9.0, 9.0], "weight_shape": [8, 8]} for i in range(2)}
    p = make_pass("quantize", {"ranges": ranges_file(tmp_path, ranges), "skip": "matmul_1"})
    result = apply_checked(p, mod)
    assert dict(result.stats) == {"quantized": 1, "skipped": 1}
    consts = [c for c in _dequantized_weights(result.module)]
    assert len(consts) == 1 and consts[0].shape == (8, 8)
    np.testing.assert_array_equal(consts[0], weight_qparams(w1, 1)[0])


def _dequantized_weights(mod):
    from graphopt import _tvm

    return [
        _tvm.constant_value(c.args[0])
        for c in _tvm.iter_relax_calls(mod)
        if c.op.name == "relax.dequantize" and isinstance(c.args[0], tvm.ir.GenericConst)
    ]


def test_errors(tmp_path):
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    mod = fp32_module((1, 3, 6, 6), lambda x: R_op.nn.conv2d(x, relax.const(w)))
    with pytest.raises(CalibrationError, match="needs ranges"):
        make_pass("quantize")(mod)
    wrong = ranges_file(tmp_path, {"conv2d_0": {"input": [0, 1], "weight_shape": [4, 3, 1, 1]}})
    with pytest.raises(CalibrationError, match="does not match this graph"):
        make_pass("quantize", {"ranges": wrong})(mod)
    with pytest.raises(CalibrationError, match="not found"):
        make_pass("quantize", {"ranges": str(tmp_path / "none.json")})(mod)
    with pytest.raises(CalibrationError, match="mode"):
        make_pass("quantize", {"mode": "fast"})(mod)


def test_pipeline_text_round_trip(tmp_path):
    from graphopt.pipeline import canonical_text, instantiate, parse_pipeline

    text = f"quantize{{ranges={tmp_path}/r.json,skip=conv2d_0:matmul_2}}"
    passes = instantiate(parse_pipeline(text))
    assert passes[0].options.skip == ("conv2d_0", "matmul_2")
    assert canonical_text(passes) == text


def residual_module(shape=(1, 8, 6, 6)):
    """x -> conv1x1 + bias -> relu -> conv1x1 + bias -> add(x, .) -> conv1x1: one CNN block."""
    c = shape[1]
    w1, w2, w3 = (RNG.normal(size=(c, c, 1, 1)).astype(np.float32) * 0.3 for _ in range(3))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R_op.nn.conv2d(x, relax.const(w1)))
            y = bb.emit(
                R_op.nn.relu(
                    bb.emit(
                        R_op.add(y, relax.const(RNG.normal(size=(1, c, 1, 1)).astype(np.float32)))
                    )
                )
            )
            y = bb.emit(R_op.nn.conv2d(y, relax.const(w2)))
            y = bb.emit(R_op.add(y, relax.const(RNG.normal(size=(1, c, 1, 1)).astype(np.float32))))
            z = bb.emit(R_op.add(y, x))
            out = bb.emit_output(R_op.nn.conv2d(z, relax.const(w3)))
        bb.emit_func_output(out)
    return bb.get()


def test_residual_join_gets_qdq_and_shares_the_block_input(tmp_path):
    """add(x, conv(...)) -> QDQ on both operands and the result; x's QDQ is shared with conv1,
    the add's result QDQ with conv3 (one quantize per tensor); joins=false leaves it fp32."""
    from graphopt.compress.common.layers import find_joins
    from graphopt.compress.int8.calibrate import calibrate

    mod = residual_module()
    assert [j.name for j in find_joins(mod["main"])] == ["add_0"]
    feeds = [{"x": RNG.normal(size=(1, 8, 6, 6)).astype(np.float32)} for _ in range(4)]
    ranges = calibrate(mod, feeds, "minmax")
    assert ranges["add_0"]["kind"] == "add" and len(ranges["add_0"]["output"]) == 2
    path = ranges_file(tmp_path, ranges)
    result = apply_checked(make_pass("quantize", {"ranges": path}), mod)
    assert result.stats["joins"] == 1
    calls = [b.value for blk in result.module["main"].body.blocks for b in blk.bindings]
    ops = [c.op.name for c in calls if isinstance(c, relax.Call)]
    # x (shared by conv1 and the add), conv1's relu output, conv2's output, the add's result
    assert ops.count("relax.quantize") == 4
    add = next(
        c
        for c in calls
        if isinstance(c, relax.Call)
        and c.op.name == "relax.add"
        and not isinstance(c.args[1], tvm.ir.GenericConst)
    )
    assert all(
        next(
            b.value
            for blk in result.module["main"].body.blocks
            for b in blk.bindings
            if b.var.same_as(a)
        ).op.name
        == "relax.dequantize"
        for a in add.args
    )
    x = feeds[0]["x"]
    got, want = run_module(result.module, [x])[0], run_module(mod, [x])[0]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    off = apply_checked(make_pass("quantize", {"ranges": path, "joins": "false"}), mod)
    assert "joins" not in off.stats
    off_ops = [
        b.value.op.name
        for blk in off.module["main"].body.blocks
        for b in blk.bindings
        if isinstance(b.value, relax.Call)
    ]
    assert off_ops.count("relax.quantize") == 3  # the three layer inputs only
