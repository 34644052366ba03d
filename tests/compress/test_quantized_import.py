"""Import of quantized ONNX models vs integer references.

onnxruntime's u8 x s8 kernels are not exact on x86 CPUs without VNNI (AVX2: `vpmaddubsw`
saturates pairs of products to int16; MatMulInteger off by thousands, QLinearConv by 100
output steps), with graph optimizations disabled too. The integer ops are checked against
numpy in int64; whole onnxruntime-quantized models against onnxruntime in its exact int8 mode
(`_ort_exact_int8`), itself checked against numpy here.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.frontend import import_onnx
from graphopt.frontend.quantized import rewrite_quantized
from graphopt.reference import ort_session, session_options
from graphopt.testing import run_module

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "q", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    sess = ort_session(model.SerializeToString(), optimize=False)
    ref = sess.run(None, feeds)
    imported = import_onnx(model)
    got = run_module(imported.mod, [feeds[s.name] for s in imported.inputs])
    return ref, got


def _ort_exact_int8(model: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """onnxruntime with `session.x64quantprecision`: its graph optimizations turn constant s8
    weights into u8 so the u8 x u8 kernels (int16 products, no saturation) run on x86 CPUs
    without VNNI; a no-op elsewhere. Exact for models whose int8 weights are initializers."""
    import onnxruntime as ort

    so = session_options()
    so.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _conv_int(x, w, xz, wz, pads=(0, 0, 0, 0), strides=(1, 1), group=1) -> np.ndarray:
    """ConvInteger in int64: sums of (x - xz) * (w - wz) over each window (wz scalar or per
    output channel; padding is the zero point, so 0 after the subtraction)."""
    x = np.pad(
        x.astype(np.int64) - np.int64(xz),
        ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
    )
    w = w.astype(np.int64) - np.asarray(wz, np.int64).reshape(-1, 1, 1, 1)
    o, cg, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    win = win[:, :, :: strides[0], :: strides[1]]
    n, _, oh, ow = win.shape[:4]
    win = win.reshape(n, group, cg, oh, ow, kh, kw)
    out = np.einsum("ngcyxij,gocij->ngoyx", win, w.reshape(group, o // group, cg, kh, kw))
    return out.reshape(n, o, oh, ow)


def _qlinear_conv_ref(x, w, p: dict, attrs: dict) -> np.ndarray:
    """QLinearConv: exact int64 accumulation plus bias, requantized in float64, rounded to
    nearest even."""
    acc = _conv_int(
        x, w, p["xz"], p["wz"], attrs.get("pads", (0, 0, 0, 0)), attrs.get("strides", (1, 1)),
        attrs.get("group", 1),
    )  # fmt: skip
    acc = acc + p["b"].astype(np.int64).reshape(1, -1, 1, 1)
    scale = np.float64(p["xs"]) * p["ws"].astype(np.float64) / np.float64(p["ys"])
    y = np.rint(acc * scale.reshape(1, -1, 1, 1)) + int(p["yz"])
    return np.clip(y, 0, 255).astype(np.uint8)


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs",
    [
        ((1, 3, 9, 7), (5, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
        ((2, 4, 10, 10), (4, 1, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 0], "group": 4}),
        ((1, 6, 5, 5), (4, 3, 1, 1), {"group": 2}),
    ],
)
def test_qlinear_conv(x_shape, w_shape, attrs):
    model, params = _qlinear_conv_model(x_shape, w_shape, attrs)
    assert {n.op_type for n in rewrite_quantized(model).graph.node} == {
        "DequantizeLinear", "Conv", "QuantizeLinear"
    }  # fmt: skip
    x = RNG.integers(0, 256, x_shape).astype(np.uint8)
    imported = import_onnx(model)
    (got,) = run_module(imported.mod, [x])
    ref = _qlinear_conv_ref(x, params["w"], params, attrs)
    diff = np.abs(ref.astype(np.int32) - got.astype(np.int32))
    # Exact but for rounding ties of the requantization (fp32 vs exact int32 accumulation).
    assert diff.max() <= 1 and np.mean(diff != 0) < 0.01


def _qlinear_conv_model(x_shape, w_shape, attrs, rng=RNG):
    o = w_shape[0]
    params = {
        "xs": np.float32(0.02), "xz": np.uint8(128),
        "w": rng.integers(-127, 128, w_shape).astype(np.int8),
        "ws": rng.uniform(0.005, 0.02, o).astype(np.float32),
        "wz": np.zeros(o, np.int8),
        "ys": np.float32(0.05), "yz": np.uint8(100),
        "b": rng.integers(-5000, 5000, o).astype(np.int32),
    }  # fmt: skip
    inits = [_init(k, v) for k, v in params.items()]
    node = helper.make_node(
        "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], **attrs
    )
    model = _model(
        [node], [_vi("x", TensorProto.UINT8, x_shape)], [_vi("y", TensorProto.UINT8, None)], inits
    )  # noqa: E501
    return model, params


def test_qlinear_matmul():
    inits = [
        _init("as", np.float32(0.03)), _init("az", np.int8(-3)),
        _init("b", RNG.integers(-127, 128, (24, 7)).astype(np.int8)),
        _init("bs", RNG.uniform(0.005, 0.02, 7).astype(np.float32)),
        _init("bz", np.zeros(7, np.int8)),
        _init("ys", np.float32(0.04)), _init("yz", np.int8(2)),
    ]  # fmt: skip
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    model = _model(
        [node], [_vi("a", TensorProto.INT8, (3, 5, 24))], [_vi("y", TensorProto.INT8, None)], inits
    )  # noqa: E501
    a = RNG.integers(-128, 128, (3, 5, 24)).astype(np.int8)
    (ref,), (got,) = _both(model, {"a": a})
    diff = np.abs(ref.astype(np.int32) - got.astype(np.int32))
    assert diff.max() <= 1 and np.mean(diff != 0) < 0.01


def test_conv_integer_and_matmul_integer_are_exact():
    model, params, feeds = _integer_model()
    imported = import_onnx(model)
    got = run_module(imported.mod, [feeds[s.name] for s in imported.inputs])
    for r, g in zip(_integer_ref(params, feeds), got):
        assert g.dtype == np.int32
        np.testing.assert_array_equal(g, r)


def test_onnxruntime_exact_int8_mode_is_exact():
    """The reference of the onnxruntime-quantized models: exact on this CPU (ConvInteger,
    MatMulInteger; QLinearConv but for requantization ties)."""
    rng = np.random.default_rng(1)  # the module's RNG feeds the other tests: leave it be
    model, params, feeds = _integer_model(rng)
    for r, o in zip(_integer_ref(params, feeds), _ort_exact_int8(model, feeds)):
        np.testing.assert_array_equal(o, r)
    attrs = {"pads": [1, 1, 1, 1]}
    model, params = _qlinear_conv_model((1, 8, 9, 7), (16, 8, 3, 3), attrs, rng)
    x = rng.integers(0, 256, (1, 8, 9, 7)).astype(np.uint8)
    (got,) = _ort_exact_int8(model, {"x": x})
    diff = np.abs(got.astype(np.int32) - _qlinear_conv_ref(x, params["w"], params, attrs))
    assert diff.max() <= 1 and np.mean(diff != 0) < 0.01


def _integer_ref(params, feeds):
    """ConvInteger and MatMulInteger of `_integer_model` in int64 numpy."""
    conv = _conv_int(feeds["x"], params["w"], params["xz"], params["wz"], (1, 1, 1, 1), (2, 2))
    a = feeds["a"].astype(np.int64) - np.int64(feeds["az"])
    return [conv, a @ (params["b"].astype(np.int64) - params["bz"].astype(np.int64))]


def _integer_model(rng=RNG):
    params = {
        "w": rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8),
        "xz": np.uint8(7),
        "wz": np.int8(-2),  # onnxruntime takes only a scalar here
        "b": rng.integers(-128, 128, (36, 5)).astype(np.int8),
        "bz": rng.integers(-3, 3, 5).astype(np.int8),
    }
    inits = [_init(k, v) for k, v in params.items()]
    nodes = [
        helper.make_node(
            "ConvInteger", ["x", "w", "xz", "wz"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]
        ),  # noqa: E501
        helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["m"]),
    ]
    inputs = [
        _vi("x", TensorProto.UINT8, (2, 4, 7, 6)),
        _vi("a", TensorProto.UINT8, (4, 36)),
        _vi("az", TensorProto.UINT8, ()),
    ]
    outputs = [_vi("c", TensorProto.INT32, None), _vi("m", TensorProto.INT32, None)]
    model = _model(nodes, inputs, outputs, inits)
    feeds = {
        "x": rng.integers(0, 256, (2, 4, 7, 6)).astype(np.uint8),
        "a": rng.integers(0, 256, (4, 36)).astype(np.uint8),
        "az": np.array(200, np.uint8),
    }
    return model, params, feeds


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    """A small fp32 CNN (conv, relu, depthwise conv, pool, matmul) and calibration data."""
    d = tmp_path_factory.mktemp("ortq")
    w1 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3
    w3 = RNG.standard_normal((8, 10)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8, strides=[2, 2]),  # noqa: E501
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w3"], ["y"]),
    ]
    inits = [_init("w1", w1), _init("b1", RNG.standard_normal(8).astype(np.float32) * 0.1),
             _init("w2", w2), _init("w3", w3)]  # fmt: skip
    model = _model(
        nodes,
        [_vi("x", TensorProto.FLOAT, (1, 3, 12, 12))],
        [_vi("y", TensorProto.FLOAT, (1, 10))],
        inits,
        opset=13,
    )  # noqa: E501
    path = d / "cnn.onnx"
    onnx.save(model, path)
    samples = [RNG.standard_normal((1, 3, 12, 12)).astype(np.float32) for _ in range(16)]
    return d, path, samples


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_onnxruntime_static_quantized_models(small_cnn, fmt):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    d, path, samples = small_cnn

    Reader = _reader_class(CalibrationDataReader, samples)

    out = d / f"cnn_{fmt}.onnx"
    quantize_static(
        str(path), str(out), Reader(), quant_format=getattr(QuantFormat, fmt),
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip
    model = onnx.load(out)
    ops = {n.op_type for n in model.graph.node}
    assert ("QLinearConv" in ops) == (fmt == "QOperator")
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    if fmt == "QDQ":
        (ref,), (got,) = _both(model, {"x": x})  # onnxruntime runs fp32 Conv / MatMul
    else:
        (ref,) = _ort_exact_int8(model, {"x": x})  # QLinearConv, QLinearMatMul: int8 kernels
        (got,) = run_module(import_onnx(model).mod, [x])
    # Both dequantize the same int8 values; they differ only where a requantization rounds a
    # tie differently (exact int32 vs fp32 accumulation): at most a step of the output scale.
    step = np.abs(ref).max() / 64
    assert np.abs(ref - got).max() <= step, (np.abs(ref - got).max(), step)
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.999


def test_onnxruntime_dynamic_quantized_matmul(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = RNG.standard_normal((16, 12)).astype(np.float32)
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_vi("x", TensorProto.FLOAT, (4, 16))], [_vi("y", TensorProto.FLOAT, (4, 12))],
        [_init("w", w)], opset=13,
    )  # fmt: skip
    onnx.save(model, tmp_path / "m.onnx")
    quantize_dynamic(
        str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8
    )  # noqa: E501
    q = onnx.load(tmp_path / "q.onnx")
    assert "MatMulInteger" in {n.op_type for n in q.graph.node}
    x = RNG.standard_normal((4, 16)).astype(np.float32)
    (ref,), (got,) = _both(q, {"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_imported_qdq_model_gets_its_int8_weights_back(small_cnn):
    """fold-constants turns DequantizeLinear(int8 weight) into fp32; quantize{mode=imported}
    recovers the exact int8 weights and scales, so lower-int8 sees the QDQ form again."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from graphopt import _tvm
    from graphopt.compress.int8.flow import imported_step
    from graphopt.pass_infra import make_pass
    from graphopt.pipeline import instantiate, parse_pipeline, run_passes
    from graphopt.testing import apply_checked

    d, path, samples = small_cnn

    Reader = _reader_class(CalibrationDataReader, samples)

    out = d / "cnn_imported.onnx"
    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    mod = run_passes(import_onnx(out).mod, instantiate(parse_pipeline("O2")))
    assert imported_step(mod) is not None
    result = apply_checked(make_pass("quantize", {"mode": "imported"}), mod)
    assert dict(result.stats) == {"quantized": 3, "skipped": 0}
    int8_weights = [
        c for c in _tvm.iter_relax_calls(result.module)
        if c.op.name == "relax.dequantize" and str(c.args[0].ty.dtype) == "int8"
        and not isinstance(c.args[0], relax_var_type())
    ]  # fmt: skip
    assert len(int8_weights) == 3
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    before, after = run_module(mod, [x])[0], run_module(result.module, [x])[0]
    # Same weights (to an ulp of the scale): equal but for an output rounding tie.
    assert np.abs(before - after).max() <= np.abs(before).max() / 64


def relax_var_type():
    from tvm import relax

    return relax.Var


def test_recover_int8_weight():
    from graphopt.compress.int8.qdq import dequant_weight_np, recover_int8_weight, weight_qparams

    w = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
    wq, s = weight_qparams(w, 0)
    folded = dequant_weight_np(wq, s, 0)
    got_q, got_s = recover_int8_weight(folded, 0)
    np.testing.assert_array_equal(got_q, wq)
    np.testing.assert_allclose(got_s, s, rtol=1e-6)
    # A per-tensor scale is recovered per channel, exactly.
    wq_t, s_t = weight_qparams(w, 0, per_channel=False)
    got_q, got_s = recover_int8_weight(dequant_weight_np(wq_t, s_t, 0), 0)
    np.testing.assert_allclose(dequant_weight_np(got_q, got_s, 0), dequant_weight_np(wq_t, s_t, 0))
    assert recover_int8_weight(w, 0) is None  # plain fp32 weights are not int8 products


def _reader_class(base, samples):
    """onnxruntime's calibration reader over the small CNN's samples (input "x")."""

    class Reader(base):
        def __init__(self):
            self.it = iter({"x": s} for s in samples)

        def get_next(self):
            return next(self.it, None)

    return Reader
