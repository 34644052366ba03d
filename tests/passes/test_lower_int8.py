"""lower-int8: QDQ conv2d / matmul layers become int8 ops, bit-exact vs numpy.

Graphs that take the int8 tensor as input and end in a quantize are compared bit for bit with
a numpy integer model written from the QDQ contract (int32 bias = round(b / (s_x s_w)),
multiplier s_x s_w / s_out in fp32, round half to even, activation folded into the clamp);
graphs with fp32 ends are compared with the unlowered (fake-quant) graph. `lower` runs
`lower-int8` and then `materialize-int8` for this host's scheme (the CPU kernels); exact cases
also run the portable kernels `lower-int8` emits.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt import _tvm
from graphopt import int8_ops as K
from graphopt.compress.int8 import qdq
from graphopt.errors import PipelineError
from graphopt.pass_infra import PassResult, make_pass
from graphopt.pipeline import instantiate, parse_pipeline
from graphopt.testing import apply_checked, check_no_change, run_module

ISA = "vnni" if {"avx512vnni", "avx512bw"} <= _tvm.host_cpu_features() else "avx2"


def lower_portable(mod, **options):
    """lower-int8 alone: the portable kernels."""
    text = ",".join(f"{k}={v}" for k, v in options.items())
    (pass_,) = instantiate(parse_pipeline(f"lower-int8{{{text}}}" if text else "lower-int8"))
    return apply_checked(pass_, mod)


def materialize(mod, isa=ISA):
    (pass_,) = instantiate(parse_pipeline(f"materialize-int8{{isa={isa}}}"))
    return apply_checked(pass_, mod)


def lower(mod, isa=ISA, **options):
    """lower-int8, then the CPU kernels of `isa`; lower-int8's stats."""
    result = lower_portable(mod, **options)
    return PassResult(materialize(result.module, isa).module, result.modified, result.stats)


def _module(x_shape, x_dtype, body):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(tuple(x_shape), x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


class Layer:
    """One quantized layer with int8 input and (optionally) requantized output, plus its numpy
    integer reference."""

    def __init__(
        self,
        kind,
        x_shape,
        w_shape,
        act_dtype,
        *,
        out_dtype="uint8",
        per_channel=True,
        activation=None,
        bias=True,
        seed=0,
        **conv,
    ):
        rng = np.random.default_rng(seed)
        self.kind, self.conv, self.activation = kind, conv, activation
        self.x_shape, self.act_dtype, self.out_dtype = x_shape, act_dtype, out_dtype
        axis = 0 if kind == "conv2d" else 1
        w = rng.normal(size=w_shape).astype(np.float32) * 0.2
        self.wq, self.s_w = qdq.weight_qparams(w, axis, per_channel)
        self.axis = axis
        channels = w_shape[axis]
        self.bias = rng.normal(size=channels).astype(np.float32) if bias else None
        self.act = qdq.act_qparams(-3.0, 5.0, act_dtype)
        self.out = qdq.act_qparams(-1.0, 7.0, out_dtype) if out_dtype else None
        info = np.iinfo(act_dtype)
        self.x = rng.integers(info.min, int(info.max) + 1, x_shape).astype(act_dtype)

    def float_layer(self, bb, xf):
        wf = bb.emit(qdq.weight_dequantize(self.wq, self.s_w, self.axis))
        if self.kind == "conv2d":
            y = bb.emit(R.nn.conv2d(xf, wf, **self.conv))
            bshape = (1, -1, 1, 1)
        else:
            y = bb.emit(R.matmul(xf, wf))
            bshape = (-1,)
        if self.bias is not None:
            y = bb.emit(R.add(y, relax.const(self.bias.reshape(bshape))))
        if self.activation == "relu":
            y = bb.emit(R.nn.relu(y))
        elif self.activation == "relu6":
            y = bb.emit(R.clip(y, 0.0, 6.0))
        return y

    def module(self):
        def body(bb, x):
            s = relax.const(self.act.scale, "float32")
            zp = relax.const(self.act.zero_point, self.act_dtype)
            y = self.float_layer(bb, bb.emit(R.dequantize(x, s, zp, -1, "float32")))
            if self.out is None:
                return y
            so = relax.const(self.out.scale, "float32")
            zo = relax.const(self.out.zero_point, self.out_dtype)
            return bb.emit(R.quantize(y, so, zo, -1, self.out_dtype))

        return _module(self.x_shape, self.act_dtype, body)

    def reference(self):
        """numpy integer model of the lowered layer (requantized output)."""
        zp = self.act.zero_point
        if self.kind == "conv2d":
            c = self.conv
            spec = K.ConvSpec(
                *self.x_shape,
                self.wq.shape[0],
                self.wq.shape[2],
                self.wq.shape[3],
                tuple(c.get("strides", (1, 1))),
                tuple(c.get("padding", (0, 0, 0, 0))),
                tuple(c.get("dilation", (1, 1))),
                c.get("groups", 1),
                self.act_dtype,
            )
            acc = K.reference_conv2d(self.x, self.wq, spec, zp)
            cshape = (1, -1, 1, 1)
        else:
            acc = (self.x.astype(np.int64) - zp) @ self.wq.astype(np.int64)
            cshape = (-1,)
        s_w = np.broadcast_to(self.s_w, (self.wq.shape[self.axis],)).astype(np.float64)
        real = np.float64(self.act.scale) * s_w
        bias = np.zeros_like(real) if self.bias is None else self.bias.astype(np.float64)
        acc = acc + np.round(bias / real).astype(np.int64).reshape(cshape)
        mult = (real / self.out.scale).astype(np.float32).reshape(cshape)
        qmin, qmax = qdq.QRANGE[self.out_dtype]
        zo = self.out.zero_point
        lo, hi = float(qmin), float(qmax)
        if self.activation in ("relu", "relu6"):
            lo = max(lo, float(zo))
        if self.activation == "relu6":
            hi = min(hi, float(round(6.0 / self.out.scale) + zo))
        value = np.round(acc.astype(np.float32) * mult) + np.float32(zo)
        return np.clip(value, lo, hi).astype(self.out_dtype)


CONV_CASES = {
    "3x3_pad": dict(x_shape=(1, 5, 9, 7), w_shape=(6, 5, 3, 3), padding=(1, 1, 1, 1)),
    "stride2_groups_batch2": dict(
        x_shape=(2, 8, 10, 11),
        w_shape=(12, 4, 3, 3),
        strides=(2, 2),
        padding=(1, 0, 2, 1),
        groups=2,
    ),
    "1x1": dict(x_shape=(1, 13, 6, 5), w_shape=(7, 13, 1, 1)),
    "1x1_stride2": dict(x_shape=(1, 8, 7, 9), w_shape=(20, 8, 1, 1), strides=(2, 2)),
    "stem_3ch_stride2": dict(
        x_shape=(2, 3, 13, 12), w_shape=(16, 3, 3, 3), strides=(2, 2), padding=(1, 0, 1, 2)
    ),
    "dilated_8ch": dict(
        x_shape=(1, 8, 11, 10), w_shape=(33, 8, 3, 2), dilation=(2, 1), padding=(2, 1, 1, 0)
    ),
    "depthwise": dict(x_shape=(1, 6, 9, 9), w_shape=(6, 1, 3, 3), padding=(1, 1, 1, 1), groups=6),
    "depthwise_stride2": dict(
        x_shape=(2, 4, 11, 10),
        w_shape=(4, 1, 3, 3),
        strides=(2, 2),
        padding=(1, 1, 1, 1),
        groups=4,
    ),
}


def _conv_layer(name, **kw):
    case = dict(CONV_CASES[name])
    x_shape, w_shape = case.pop("x_shape"), case.pop("w_shape")
    return Layer("conv2d", x_shape, w_shape, **kw, **case)


def _check_exact(layer: Layer, kind: str, **options):
    mod = layer.module()
    result = lower_portable(mod, **options)
    assert result.stats[f"lowered_{kind}"] == 1 and result.stats["requantized"] == 1
    counts = _tvm.op_counts(result.module)
    for op in ("relax.quantize", "relax.dequantize", "relax.nn.conv2d", "relax.matmul"):
        assert op not in counts, f"{op} left after lowering"
    (portable,) = run_module(result.module, [layer.x])
    np.testing.assert_array_equal(portable, layer.reference())
    (got,) = run_module(materialize(result.module).module, [layer.x])
    np.testing.assert_array_equal(got, layer.reference())
    # Fake quantization (the unlowered graph) agrees up to the final requantize rounding.
    (fake,) = run_module(mod, [layer.x])
    assert np.abs(fake.astype(np.int32) - got.astype(np.int32)).max() <= 1


@pytest.mark.parametrize("name", list(CONV_CASES))
@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv2d_exact(name, act_dtype, layout):
    layer = _conv_layer(name, act_dtype=act_dtype, activation="relu6")
    _check_exact(layer, "conv2d", layout=layout)


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_conv2d_activation_folding(activation, per_channel):
    layer = _conv_layer(
        "3x3_pad",
        act_dtype="int8",
        activation=activation,
        per_channel=per_channel,
        out_dtype="int8",
        bias=activation != "relu",
    )
    _check_exact(layer, "conv2d")
    got = run_module(lower(layer.module()).module, [layer.x])[0]
    if activation is not None:
        assert got.min() >= layer.out.zero_point  # relu: clamped at the output zero point


@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("x_shape,w_shape", [((2, 7, 13), (13, 21)), ((5, 64), (64, 48))])
def test_matmul_exact(act_dtype, x_shape, w_shape):
    layer = Layer("matmul", x_shape, w_shape, act_dtype, activation="relu", seed=2)
    _check_exact(layer, "matmul")


def test_fp32_consumer_dequantizes_in_the_epilogue():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 5, 3, 3)).astype(np.float32)
    mod = qdq.conv2d_qdq_module(
        (1, 5, 9, 7),
        w,
        qdq.act_qparams(-2, 3, "uint8"),
        bias=rng.normal(size=6).astype(np.float32),
        padding=(1, 1, 1, 1),
        activation="relu6",
    )
    result = lower(mod)
    assert result.stats["dequantized"] == 1 and result.stats["lowered_conv2d"] == 1
    x = rng.normal(size=(1, 5, 9, 7)).astype(np.float32)
    got, want = run_module(result.module, [x])[0], run_module(mod, [x])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dynamic_matmul():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(33, 40)).astype(np.float32)
    mod = qdq.matmul_qdq_module((2, 9, 33), w, None, bias=rng.normal(size=40).astype(np.float32))
    result = lower(mod)
    assert result.stats["lowered_dynamic"] == 1
    x = rng.normal(size=(2, 9, 33)).astype(np.float32)
    got, want = run_module(result.module, [x])[0], run_module(mod, [x])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    check_no_change(_no_dynamic(), mod)


def _no_dynamic():
    (pass_,) = instantiate(parse_pipeline("lower-int8{dynamic=false}"))
    return pass_


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_chain_of_two_convs_stays_int8(layout):
    """conv -> relu -> QDQ -> conv: one kernel requantizes straight into the next one's input.

    NHWC: the image input is quantized into NHWC by a kernel, and the only transpose left is
    the output's (back to the graph's NCHW)."""
    rng = np.random.default_rng(6)
    w1 = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(4, 8, 1, 1)).astype(np.float32)
    a1, a2 = qdq.act_qparams(-2.0, 2.0, "int8"), qdq.act_qparams(0.0, 9.0, "uint8")

    def conv(bb, xf, w, **attrs):
        wq, s_w = qdq.weight_qparams(w, 0)
        return bb.emit(R.nn.conv2d(xf, bb.emit(qdq.weight_dequantize(wq, s_w, 0)), **attrs))

    def body(bb, x):
        y = bb.emit(R.nn.relu(conv(bb, qdq.emit_act_qdq(bb, x, a1), w1, padding=(1, 1, 1, 1))))
        return conv(bb, qdq.emit_act_qdq(bb, y, a2), w2)

    mod = _module((1, 3, 8, 8), "float32", body)
    result = lower(mod, layout=layout)
    assert result.stats["lowered_conv2d"] == 2
    assert result.stats["requantized"] == 1 and result.stats["dequantized"] == 1
    counts = _tvm.op_counts(result.module)
    assert "relax.dequantize" not in counts and "relax.nn.relu" not in counts
    calls = [c for c in _tvm.iter_relax_calls(result.module) if c.op.name == "relax.call_tir"]
    if layout == "NHWC":
        assert "relax.quantize" not in counts and counts.get("relax.permute_dims") == 1
        calls = [c for c in calls if "quantize" not in c.args[0].name_hint]
    else:
        assert counts.get("relax.quantize") == 1  # the model input only
    assert len(calls) == 2
    first, second = sorted(calls, key=lambda c: str(c.ty.dtype) != "uint8")
    assert str(first.ty.dtype) == "uint8"  # conv1 writes the int8 input of conv2 ...
    assert str(second.args[1].fields[0].ty.dtype) == "uint8"  # ... which reads it as is
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    got, want = run_module(result.module, [x])[0], run_module(mod, [x])[0]
    # Only the intermediate requantize may round differently: a few steps of a2 at most.
    assert np.abs(got - want).max() <= 3 * a2.scale * np.abs(w2).sum(axis=(1, 2, 3)).max()


@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("requantized", [True, False])
def test_global_pool_of_nhwc_output_pools_in_nhwc(keepdims, requantized):
    """conv (NHWC kernel) [-> QDQ] -> mean over H, W: pooled in NHWC, no transpose left."""
    rng = np.random.default_rng(8)
    w = rng.normal(size=(24, 8, 1, 1)).astype(np.float32)
    a1, a2 = qdq.act_qparams(-2.0, 2.0, "int8"), qdq.act_qparams(0.0, 6.0, "uint8")

    def body(bb, x):
        wq, s_w = qdq.weight_qparams(w, 0)
        wf = bb.emit(qdq.weight_dequantize(wq, s_w, 0))
        y = bb.emit(R.nn.relu(bb.emit(R.nn.conv2d(qdq.emit_act_qdq(bb, x, a1), wf))))
        y = qdq.emit_act_qdq(bb, y, a2) if requantized else y
        return bb.emit(R.mean(y, axis=[2, 3], keepdims=keepdims))

    mod = _module((2, 8, 5, 6), "float32", body)
    result = lower(mod, layout="NHWC")
    assert result.stats["lowered_conv2d"] == 1 and result.stats["requantized"] == requantized
    assert _tvm.op_counts(result.module)["relax.permute_dims"] == 1  # the input's only
    x = rng.normal(size=(2, 8, 5, 6)).astype(np.float32)
    got, want = run_module(result.module, [x])[0], run_module(mod, [x])[0]
    assert got.shape == want.shape == ((2, 24, 1, 1) if keepdims else (2, 24))
    np.testing.assert_allclose(got, want, atol=a2.scale)  # the requantize may round apart


def test_does_not_fire_without_qdq():
    bb_mod = _module(
        (1, 3, 8, 8),
        "float32",
        lambda bb, x: bb.emit(R.nn.conv2d(x, relax.const(np.ones((4, 3, 3, 3), np.float32)))),
    )
    assert check_no_change(_pass(), bb_mod).stats["left"] == 0


def test_leaves_what_it_cannot_lower():
    """A weight that is a parameter, and a conv with a run-time activation scale, stay QDQ."""
    act = qdq.act_qparams(-1.0, 1.0, "int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 6, 6), "float32"))
    w = relax.Var("w", relax.TensorType((4, 3, 3, 3), "int8"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            xf = qdq.emit_act_qdq(bb, x, act)
            wf = bb.emit(R.dequantize(w, relax.const(0.1, "float32"), relax.const(0, "int8")))
            y1 = bb.emit(R.nn.conv2d(xf, wf))
            wq = np.ones((4, 3, 3, 3), np.int8)
            y2 = bb.emit(
                R.nn.conv2d(qdq.emit_dynamic_qdq(bb, x), qdq.weight_dequantize(wq, 0.1, 0))
            )
            out = bb.emit_output(R.add(y1, y2))
        bb.emit_func_output(out)
    result = check_no_change(_pass(), bb.get())
    assert result.stats["left"] == 2 and result.stats["lowered_conv2d"] == 0


def test_unknown_isa_or_layout_is_a_pipeline_error():
    lowered = lower_portable(_conv_layer("1x1", act_dtype="int8").module()).module
    with pytest.raises(PipelineError, match="unknown isa"):
        instantiate(parse_pipeline("materialize-int8{isa=avx9}"))[0](lowered)
    with pytest.raises(PipelineError, match="unknown layout"):
        instantiate(parse_pipeline("lower-int8{layout=NCWH}"))[0](
            _conv_layer("1x1", act_dtype="int8").module()
        )


def _pass():
    return instantiate(parse_pipeline("lower-int8"))[0]


def test_registered_and_round_trips():
    (pass_,) = instantiate(parse_pipeline("lower-int8{layout=NHWC}"))
    assert pass_.name == "lower-int8" and pass_.option_text() == {"layout": "NHWC"}
    (pass_,) = instantiate(parse_pipeline("materialize-int8{isa=avx2}"))
    assert pass_.name == "materialize-int8" and pass_.option_text() == {"isa": "avx2"}


DIGITS = "graphopt/models/digits_cnn.onnx"
DIGITS_EVAL = "graphopt/models/digits_eval.npz"


@pytest.mark.slow
def test_digits_end_to_end_matches_fake_quant(tmp_path):
    """The bundled model through `quantize` + `lower-int8` (pipeline text) against the same
    QDQ graph without lowering: the same predictions, logits within requantize rounding."""
    import graphopt
    from graphopt.compress.common.data import load_calibration
    from graphopt.compress.int8.calibrate import calibrate_to_file
    from graphopt.frontend import import_onnx

    imported = import_onnx(DIGITS)
    graph = instantiate(parse_pipeline("O2"))
    mod = imported.mod
    for p in graph:
        mod = p(mod).module
    feeds = load_calibration(DIGITS_EVAL, imported.inputs, limit=32)
    ranges = tmp_path / "ranges.json"
    calibrate_to_file(ranges, mod, feeds, "minmax")
    quant = f"O2,quantize{{ranges={ranges}}}"
    fake = graphopt.compile(DIGITS, tmp_path / "fake", pipeline=quant)
    real = graphopt.compile(DIGITS, tmp_path / "int8", pipeline=f"{quant},lower-int8")
    stats = next(p for p in real.manifest["report"]["passes"] if p["pass"] == "lower-int8")
    assert stats["stats"]["lowered_conv2d"] == 4 and stats["stats"]["lowered_matmul"] == 1
    x = np.load(DIGITS_EVAL)["x"]
    name = imported.inputs[0].name
    got = np.concatenate([next(iter(real.run({name: x[i : i + 1]}).values())) for i in range(100)])
    want = np.concatenate([next(iter(fake.run({name: x[i : i + 1]}).values())) for i in range(100)])
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


@pytest.mark.parametrize("form", ["relax_ops", "call_te"])
def test_clip_as_maximum_minimum_folds(form):
    """ONNX Clip imports as call_tir(maximum) -> call_tir(minimum) with scalar constants."""
    from tvm import topi

    layer = _conv_layer("1x1", act_dtype="int8", activation=None)

    def clamp(bb, y):
        lo, hi = relax.const(0.0, "float32"), relax.const(6.0, "float32")
        if form == "relax_ops":
            return bb.emit(R.minimum(bb.emit(R.maximum(y, lo)), hi))
        return bb.emit_te(topi.minimum, bb.emit_te(topi.maximum, y, lo), hi)

    float_layer = layer.float_layer
    layer.float_layer = lambda bb, xf: clamp(bb, float_layer(bb, xf))
    layer.activation = "relu6"  # what the reference folds: the same clamp
    _check_exact(layer, "conv2d")


MATERIALIZE_TARGETS = {
    # target the schedule stage runs under -> the scheme materialize-int8 picks
    "znver3": ({"kind": "llvm", "mcpu": "znver3"}, "avx2"),
    "icelake-server": ({"kind": "llvm", "mcpu": "icelake-server"}, "vnni"),
    "x86-64": ({"kind": "llvm", "mcpu": "x86-64"}, "generic"),
}


def _materialize_layer(layer: str) -> tuple[Layer, str]:
    if layer == "matmul":
        return Layer("matmul", (2, 5, 13), (13, 21), "uint8", activation="relu", seed=3), "NCHW"
    name = {"depthwise": "depthwise", "window": "3x3_pad", "depthwise_nchw": "depthwise"}.get(
        layer, "stride2_groups_batch2"
    )
    layout = "NHWC" if layer in ("window", "depthwise") else "NCHW"
    return _conv_layer(name, act_dtype="int8", activation="relu6"), layout


@pytest.mark.parametrize("target", list(MATERIALIZE_TARGETS))
@pytest.mark.parametrize("layer", ["conv", "window", "depthwise", "depthwise_nchw", "matmul"])
def test_materialize_builds_the_targets_scheme(target, layer):
    """One lowered module; materialize-int8 under each target builds that target's kernel and
    packs the natural constants for it; the result is bit-exact."""
    spec, scheme = MATERIALIZE_TARGETS[target]
    if scheme == "vnni" and not {"avx512vnni", "avx512bw"} <= _tvm.host_cpu_features():
        pytest.skip("runs VNNI code")
    lay, layout = _materialize_layer(layer)
    lowered = lower_portable(lay.module(), layout=layout).module
    with tvm.target.Target(spec):
        result = apply_checked(make_pass("materialize-int8"), lowered)
    assert result.stats["kernels"] == 1 and result.stats[f"isa_{scheme}"] == 1
    (got,) = run_module(result.module, [lay.x])
    np.testing.assert_array_equal(got, lay.reference())


def test_materialize_for_arm_emits_sdot():
    lay = _conv_layer("3x3_pad", act_dtype="uint8")
    lowered = lower_portable(lay.module()).module
    arm = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}
    )
    with arm:
        mod = make_pass("materialize-int8").run(lowered).module
    (kernel,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    kernel = kernel.with_attr("global_symbol", "main")
    asm = tvm.tirx.build(tvm.IRModule({"main": kernel}), target=arm).inspect_source("asm")
    assert "sdot" in asm


def test_materialized_kernels_are_kept():
    """Packing starts from the natural constants: kernels an earlier (forced) materialize-int8
    built are kept as they are, whatever the scheme of the next run."""
    lay = _conv_layer("1x1", act_dtype="int8")
    avx2 = materialize(lower_portable(lay.module()).module, "avx2").module
    result = check_no_change(make_pass("materialize-int8", {"isa": "generic"}), avx2)
    assert result.stats["kernels"] == 0 and result.stats["already_built"] == 1


@pytest.mark.slow
def test_partly_quantized_model_compiles_and_matches_fake_quant(tmp_path):
    """Some layers kept fp32 (what --max-drop does): schedule-cpu prepacks their fp32 convs
    beside the integer kernels (SplitLayoutRewritePreproc used to abort on the kernels' missing
    root block); the compiled model equals the same QDQ graph without lowering."""
    import graphopt
    from graphopt.compress.common.data import load_calibration
    from graphopt.compress.int8.calibrate import calibrate_to_file
    from graphopt.frontend import import_onnx

    imported = import_onnx(DIGITS)
    mod = imported.mod
    for p in instantiate(parse_pipeline("O2")):
        mod = p(mod).module
    feeds = load_calibration(DIGITS_EVAL, imported.inputs, limit=16)
    ranges = tmp_path / "ranges.json"
    calibrate_to_file(ranges, mod, feeds, "minmax")
    quant = f"O2,quantize{{ranges={ranges},skip=conv2d_1:conv2d_3}}"
    fake = graphopt.compile(DIGITS, tmp_path / "fake", pipeline=quant, target="x86")
    real = graphopt.compile(DIGITS, tmp_path / "int8", pipeline=f"{quant},lower-int8", target="x86")
    passes = real.manifest["report"]["passes"]
    lowered = next(p for p in passes if p["pass"] == "lower-int8")["stats"]
    assert lowered["lowered_conv2d"] == 2 and lowered["lowered_matmul"] == 1
    sched = next(p for p in passes if p["pass"] == "schedule-cpu")["stats"]
    assert sched["prepacked_weights"] > 0  # the fp32 convs were prepacked beside the kernels
    x = np.load(DIGITS_EVAL)["x"]
    name = imported.inputs[0].name
    got = np.concatenate([next(iter(real.run({name: x[i : i + 1]}).values())) for i in range(50)])
    want = np.concatenate([next(iter(fake.run({name: x[i : i + 1]}).values())) for i in range(50)])
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


def _per_row_module(x_shape, wq, s_w, bias, scale_param: bool):
    """matmul(DQ(x per row), DQ(wq)) + bias; the row scales are a parameter (exact test) or
    computed in the graph as `quantize{mode=dynamic,granularity=row}` emits them."""
    rows = x_shape[-2]
    bb = relax.BlockBuilder()
    if scale_param:
        x = relax.Var("q", relax.TensorType(x_shape, "int8"))
        s = relax.Var("s", relax.TensorType((rows,), "float32"))
        params = [x, s]
    else:
        x = relax.Var("x", relax.TensorType(x_shape, "float32"))
        params = [x]
    with bb.function("main", params):
        with bb.dataflow():
            if scale_param:
                zp = relax.const(np.zeros(rows, np.int8))
                xf = bb.emit(R.dequantize(x, s, zp, len(x_shape) - 2, "float32"))
            else:
                xf = qdq.emit_dynamic_qdq(bb, x, per_row=True)
            y = bb.emit(R.matmul(xf, qdq.weight_dequantize(wq, s_w, 1)))
            y = bb.emit(R.add(y, relax.const(bias)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("x_shape", [(1, 9, 33), (7, 64), (1, 1, 16, 40)])
def test_dynamic_per_row_matmul_exact(x_shape):
    """Per-token dynamic quantization: int8 weights become constants of the kernel, the row
    scales are passed to it, and the result equals the numpy integer model bit for bit."""
    rng = np.random.default_rng(11)
    k, n = x_shape[-1], 37
    wq, s_w = qdq.weight_qparams(rng.normal(size=(k, n)).astype(np.float32), 1, True)
    bias = rng.normal(size=n).astype(np.float32)
    mod = _per_row_module(x_shape, wq, s_w, bias, scale_param=True)
    result = lower(mod)
    assert result.stats["lowered_dynamic"] == 1 and result.stats["left"] == 0
    main = result.module["main"]
    assert "dequantize" not in str(main) and "matmul" not in str(main.body.blocks[0].bindings[-1])
    q = rng.integers(-128, 128, x_shape).astype(np.int8)
    s = (rng.uniform(0.01, 0.2, x_shape[-2])).astype(np.float32)
    got = run_module(result.module, [q, s])[0]
    acc = q.astype(np.int64) @ wq.astype(np.int64)
    scale = np.broadcast_to(s_w.astype(np.float32).reshape(-1), (n,))
    # The kernel's epilogue is (f32(acc) * s_w) * s_row + bias with LLVM fusing the last
    # multiply-add (one rounding): modelled in float64, where the product is exact.
    t = (acc.astype(np.float32) * scale).astype(np.float64)
    want = (t * s.reshape(-1, 1).astype(np.float64) + bias.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_dynamic_per_row_matmul_from_float_matches_fake_quant():
    rng = np.random.default_rng(12)
    wq, s_w = qdq.weight_qparams(rng.normal(size=(48, 20)).astype(np.float32), 1, True)
    bias = rng.normal(size=20).astype(np.float32)
    mod = _per_row_module((1, 6, 48), wq, s_w, bias, scale_param=False)
    result = lower(mod)
    assert result.stats["lowered_dynamic"] == 1 and result.stats["left"] == 0
    x = rng.normal(size=(1, 6, 48)).astype(np.float32)
    x[0, 2] *= 40  # an outlier token: per-row scales keep the other rows fine
    got, want = run_module(result.module, [x])[0], run_module(mod, [x])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_zero_pad_before_a_quantized_conv_folds_into_its_padding():
    """conv -> relu -> pad (TF-style, an importer pad kernel) -> QDQ -> depthwise conv: the pad
    becomes the depthwise conv's padding, so the first conv requantizes straight into it."""
    from tvm import topi

    rng = np.random.default_rng(21)
    w1 = rng.normal(size=(6, 4, 1, 1)).astype(np.float32) * 0.3
    w2 = rng.normal(size=(6, 1, 3, 3)).astype(np.float32) * 0.3
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 9, 9), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = qdq.emit_act_qdq(bb, x, qdq.act_qparams(-3.0, 3.0))
            wq1, s1 = qdq.weight_qparams(w1, 0)
            y = bb.emit(R.nn.relu(R.nn.conv2d(xf, qdq.weight_dequantize(wq1, s1, 0))))
            p = bb.emit_te(topi.nn.pad, y, [0, 0, 0, 0], [0, 0, 1, 1])
            pf = qdq.emit_act_qdq(bb, p, qdq.act_qparams(0.0, 4.0, "uint8"))
            wq2, s2 = qdq.weight_qparams(w2, 0)
            z = bb.emit(R.nn.conv2d(pf, qdq.weight_dequantize(wq2, s2, 0), strides=2, groups=6))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    mod = bb.get()
    result = lower(mod)
    s = result.stats
    assert s["pads_folded"] == 1 and s["lowered_conv2d"] == 2 and s["requantized"] == 1
    assert not any("pad" in g.name_hint for g in result.module.functions)
    v = rng.normal(size=(1, 4, 9, 9)).astype(np.float32)
    got, want = run_module(result.module, [v])[0], run_module(mod, [v])[0]
    assert got.shape == want.shape == (1, 6, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _join_module(shape, a, b, out, activation=None):
    """int8 a, b -> dequantize -> add [relu] -> quantize: the residual join alone."""
    bb = relax.BlockBuilder()
    xa = relax.Var("a", relax.TensorType(shape, a.dtype))
    xb = relax.Var("b", relax.TensorType(shape, b.dtype))

    def deq(x, q):
        s, zp = relax.const(q.scale, "float32"), relax.const(q.zero_point, q.dtype)
        return bb.emit(R.dequantize(x, s, zp, axis=-1, out_dtype="float32"))

    with bb.function("main", [xa, xb]):
        with bb.dataflow():
            y = bb.emit(R.add(deq(xa, a), deq(xb, b)))
            if activation == "relu":
                y = bb.emit(R.nn.relu(y))
            s, zp = relax.const(out.scale, "float32"), relax.const(out.zero_point, out.dtype)
            q = bb.emit_output(R.quantize(y, s, zp, axis=-1, out_dtype=out.dtype))
        bb.emit_func_output(q)
    return bb.get()


@pytest.mark.parametrize("activation", [None, "relu"])
def test_residual_join_exact(activation):
    """add(dequantize(qa), dequantize(qb)) [relu] -> quantize: one int8 kernel, bit-exact vs the
    numpy fixed-point model, within one step of the fake-quant graph."""
    shape = (1, 6, 7, 9)
    a, b = qdq.act_qparams(-2.3, 3.1, "int8"), qdq.act_qparams(-0.7, 4.4, "uint8")
    out = qdq.act_qparams(-3.9, 6.2, "int8")
    mod = _join_module(shape, a, b, out, activation)
    result = lower(mod)
    assert result.stats["lowered_add"] == 1
    counts = _tvm.op_counts(result.module)
    assert not {"relax.add", "relax.dequantize", "relax.quantize"} & set(counts)
    rng = np.random.default_rng(3)
    xa = rng.integers(-128, 128, shape).astype(np.int8)
    xb = rng.integers(0, 256, shape).astype(np.uint8)
    got = run_module(result.module, [xa, xb])[0]
    ma, mb, shift = K.add_multipliers(a.scale, b.scale, out.scale)
    lo = float(out.zero_point) if activation == "relu" else -np.inf
    ep = K.Epilogue("int8", zp=out.zero_point, lo=lo)
    spec = K.AddSpec(shape, "int8", "uint8", a.zero_point, b.zero_point, ma, mb, shift, ep)
    np.testing.assert_array_equal(got, K.reference_add(xa, xb, spec))
    fake = run_module(mod, [xa, xb])[0]
    assert np.abs(got.astype(np.int32) - fake).max() <= 1


def test_residual_block_stays_int8(tmp_path):
    """quantize (with joins) then lower-int8 on conv -> relu -> conv -> add(x, .) -> conv: every
    op becomes an integer kernel; only the model input is quantized in fp32."""
    from graphopt.compress.int8.calibrate import calibrate
    from graphopt.compress.int8.ranges import write_ranges

    rng = np.random.default_rng(9)
    c, shape = 16, (1, 16, 10, 10)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))

    def conv(y, k=1):
        w = relax.const(rng.normal(size=(c, c, k, k)).astype(np.float32) * 0.2)
        y = bb.emit(R.nn.conv2d(y, w, padding=(k // 2,) * 4))
        return bb.emit(R.add(y, relax.const(rng.normal(size=(1, c, 1, 1)).astype(np.float32))))

    with bb.function("main", [x]):
        with bb.dataflow():
            y = conv(bb.emit(R.nn.relu(conv(x))), 3)
            z = bb.emit(R.add(x, y))
            out = bb.emit_output(conv(z))
        bb.emit_func_output(out)
    mod = bb.get()
    feeds = [{"x": rng.normal(size=shape).astype(np.float32)} for _ in range(4)]
    path = tmp_path / "ranges.json"
    write_ranges(path, calibrate(mod, feeds, "minmax"), "minmax")
    quantized = apply_checked(make_pass("quantize", {"ranges": str(path)}), mod).module
    result = lower(quantized)
    assert result.stats["lowered_conv2d"] == 3 and result.stats["lowered_add"] == 1
    counts = _tvm.op_counts(result.module)
    assert counts.get("relax.quantize") == 1  # x, shared by the first conv and the add
    assert "relax.add" not in counts and "relax.dequantize" not in counts
    x0 = feeds[0]["x"]
    got, fake = run_module(result.module, [x0])[0], run_module(quantized, [x0])[0]
    want = run_module(mod, [x0])[0]
    assert np.abs(got - fake).max() <= 0.05 * np.abs(want).max()  # requantize rounding only
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()


def test_lowering_is_target_independent():
    """The same module whatever target is current (none, VNNI, ARM): portable kernels with
    no instruction-set intrinsics, and nothing imported from the targets."""
    import contextlib
    from pathlib import Path

    mod = Layer("matmul", (2, 5, 13), (13, 21), "int8", activation="relu").module()
    conv = _conv_layer("3x3_pad", act_dtype="int8").module()
    targets = [
        None,
        {"kind": "llvm", "mcpu": "icelake-server"},
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
    ]
    for source in (mod, conv):
        lowered = []
        for spec in targets:
            with tvm.target.Target(spec) if spec else contextlib.nullcontext():
                lowered.append(lower_portable(source, layout="NHWC").module)
        for other in lowered[1:]:
            tvm.ir.assert_structural_equal(lowered[0], other)
        kernels = [f for f in lowered[0].functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        assert kernels and all(K.recipe_of(f).isa is None for f in kernels)
        assert not any("call_llvm" in f.script() for f in kernels)
    root = Path(__file__).resolve().parents[2] / "passes"
    for name in ("lower_int8.py", "_int8_reference.py", "_int8_pad.py"):
        assert "graphopt.targets" not in (root / name).read_text(), name


def test_join_reading_transposed_operands_builds():
    """A residual join in NHWC whose operands arrive NCHW (a quantized fp32 tensor): the int8
    add is opaque to FuseOps, so it is not fused with the transposes (FuseTIR cannot merge the
    two, their buffers' shapes differ in index type) and the graph builds for the target."""
    from graphopt.build import compile_module
    from graphopt.target_infra import host_target

    shape = (1, 16, 7, 7)
    a, b = qdq.act_qparams(-2.3, 3.1, "int8"), qdq.act_qparams(-0.7, 4.4, "int8")
    out = qdq.act_qparams(-3.9, 6.2, "int8")
    result = lower_portable(_join_module(shape, a, b, out), layout="NHWC")
    assert result.stats["lowered_add"] == 1
    rng = np.random.default_rng(5)
    xa, xb = (rng.integers(-128, 128, shape).astype(np.int8) for _ in range(2))
    exe = compile_module(result.module, host_target())
    vm = relax.VirtualMachine(exe, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(xb)).numpy()
    np.testing.assert_array_equal(got, run_module(result.module, [xa, xb])[0])
