"""The 16-bit depthwise conv (`graphopt.precision_depthwise`): its kernels against the numpy
model bit for bit, and `--precision` lowering depthwise convs on x86 with the bit-pattern
handoff between them and the pointwise convs around them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import _tvm
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.precision_depthwise import DepthwiseSpec, portable_kernel, reference_depthwise
from graphopt.precision_ops import to_bits
from graphopt.reference import ort_run, ort_session
from graphopt.targets.cpu.precision.depthwise import channel_groups, depthwise16_kernel

HOST = _tvm.host_cpu_features()
SPECS = {
    "3x3_bias_relu6": DepthwiseSpec(
        (1, 9, 10, 32), (3, 3), (1, 1), (1, 1, 1, 1), "bf16", bias=True, lo=0.0, hi=6.0
    ),
    "5x5_stride2_bits": DepthwiseSpec(
        (2, 11, 9, 16), (5, 5), (2, 2), (2, 2, 2, 2), "fp16", x_bits=True, out_bits=True
    ),
    "3x3_stride2_asymmetric_pads": DepthwiseSpec(
        (1, 8, 8, 48), (3, 3), (2, 2), (0, 0, 1, 1), "bf16", x_bits=True
    ),
    "13_wide_rows_24_channels": DepthwiseSpec(
        (1, 13, 13, 24), (3, 3), (1, 1), (1, 1, 1, 1), "bf16", bias=True, out_bits=True
    ),
    "3_rows_in_channel_groups": DepthwiseSpec(
        (1, 3, 5, 64), (3, 3), (1, 1), (1, 1, 1, 1), "bf16", bias=True, lo=0.0, hi=6.0
    ),
}


def _operands(spec: DepthwiseSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.x_shape).astype(np.float32) * 3
    x = to_bits(x, spec.precision) if spec.x_bits else x
    w = to_bits(rng.standard_normal((*spec.kernel, spec.channels)), spec.precision)
    bias = rng.standard_normal(spec.channels).astype(np.float32)
    return x, w, bias


def _run(func, spec: DepthwiseSpec, target, x, w, bias) -> np.ndarray:
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, "uint16" if spec.out_bits else "float32"))
    operands = [x, w, *([bias] if spec.bias else [])]
    lib["main"](*[tvm.runtime.tensor(a) for a in operands], out)
    return out.numpy()


def _want(spec: DepthwiseSpec, x, w, bias) -> np.ndarray:
    want = reference_depthwise(x, w, spec, bias if spec.bias else None)
    return to_bits(want, spec.precision) if spec.out_bits else want


@pytest.mark.parametrize("name", list(SPECS))
def test_portable_kernel_equals_numpy(name):
    spec = SPECS[name]
    x, w, bias = _operands(spec)
    got = _run(portable_kernel(spec), spec, "llvm", x, w, bias)
    np.testing.assert_array_equal(got, _want(spec, x, w, bias))


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("mcpu,lanes", [("haswell", 8), ("znver4", 16)], ids=["avx2", "avx512"])
def test_cpu_kernel_equals_numpy(name, mcpu, lanes):
    """Vectors of channels, register tiles of pixels (13 wide: the last tile overlaps), the
    border tiles masked, built for 2 threads (3 rows: tasks of half a row's channels): the
    same sums in the same order as the numpy model."""
    needed = {"avx2"} if lanes == 8 else {"avx512f", "avx512bw"}
    if not needed <= HOST:
        pytest.skip(f"this host has no {'/'.join(sorted(needed))}")
    spec = SPECS[name]
    x, w, bias = _operands(spec, seed=1)
    target = _tvm.make_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    with target:
        func = depthwise16_kernel(spec, lanes)
    got = _run(func, spec, target, x, w, bias)
    np.testing.assert_array_equal(got, _want(spec, x, w, bias))


def test_small_maps_split_rows_into_channel_groups():
    """TVM gives each thread ceil(tasks / threads) consecutive tasks: 7 rows of a 7x7 map on
    2 threads would run 4 on one; in two channel groups each thread runs 7 half rows."""
    assert channel_groups(7, 60, threads=2) == 2
    assert channel_groups(56, 6, threads=2) == 1  # even already
    assert channel_groups(7, 60, threads=1) == 1
    assert channel_groups(3, 4, threads=2) == 2


def test_taps_on_the_padding_are_skipped():
    """An infinite weight meets only the padding at the border: skipped, not 0 x Inf = NaN."""
    spec = DepthwiseSpec((1, 4, 4, 16), (3, 3), (1, 1), (1, 1, 1, 1), "fp16")
    x, w, bias = _operands(spec)
    w[0, 0] = to_bits(np.full(16, np.inf, np.float32), "fp16")
    want = reference_depthwise(x, w, spec)
    assert np.isfinite(want[:, 0]).all() and np.isinf(want[:, 1:, 1:]).all()
    np.testing.assert_array_equal(_run(portable_kernel(spec), spec, "llvm", x, w, bias), want)


# -- compiled: depthwise convs 16-bit on x86, bit patterns handed between the layers --------


def _block(c: int = 32, seed: int = 3, size: int | str = 14) -> onnx.ModelProto:
    """x [1, 8, 14, 14] -> pw (8 -> c) + ReLU6 -> depthwise 3x3 stride 2 + ReLU6 -> pw (c -> 8)
    -> depthwise 5x5 + ReLU6 -> y: MobileNetV2's and EfficientNet's blocks in small. `size`
    may be a dim_param name (a symbolic image size)."""
    rng = np.random.default_rng(seed)

    def weight(name, shape):
        w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        b = rng.standard_normal(shape[0]) * 0.1
        return [numpy_helper.from_array(w.astype(np.float32), name),
                numpy_helper.from_array(b.astype(np.float32), f"{name}_b")]  # fmt: skip

    inits = weight("pw1", (c, 8, 1, 1)) + weight("dw1", (c, 1, 3, 3))
    inits += weight("pw2", (8, c, 1, 1)) + weight("dw2", (8, 1, 5, 5))
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", 0.0), ("hi", 6.0))]

    def conv(out, x, w, **attrs):
        return helper.make_node("Conv", [x, w, f"{w}_b"], [out], **attrs)

    def relu6(out, x):
        return helper.make_node("Clip", [x, "lo", "hi"], [out])

    nodes = [
        conv("a", "x", "pw1"), relu6("ar", "a"),
        conv("b", "ar", "dw1", group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        relu6("br", "b"), conv("p", "br", "pw2"),
        conv("d", "p", "dw2", group=8, kernel_shape=[5, 5], pads=[2, 2, 2, 2]), relu6("y", "d"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, None, None])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_depthwise_convs_16bit_on_x86(tmp_path, precision):
    model = _block()
    compression = [Precision(PrecisionOptions(precision, edges=True))]
    art = graphopt.compile(model, tmp_path / "dw", compression=compression)
    rows = art.manifest["precision"]["layers"]
    assert [r["precision"] for r in rows] == [precision] * 4
    stats = {r["pass"]: r["stats"] for r in art.manifest["report"]["passes"]}
    assert stats["lower-precision"]["depthwise_convs"] == 2
    assert stats["materialize-precision"]["depthwise"] == 2
    # every activation between the four layers crosses as 16-bit bit patterns
    assert stats["precision-handoff"]["matmul_producers"] == 3
    onnx.save(model, tmp_path / "block.onnx")
    x = np.random.default_rng(4).standard_normal((1, 8, 14, 14)).astype(np.float32)
    ref = ort_run(ort_session(tmp_path / "block.onnx"), {"x": x})["y"]
    got = art.run({"x": x})["y"]
    tol = 0.03 if precision == "bf16" else 0.005  # 16-bit operands against fp32
    assert np.abs(got - ref).max() < tol * np.abs(ref).max()


@pytest.mark.parametrize("depthwise", [False, True])
def test_lowering_takes_depthwise_convs_only_when_asked(depthwise):
    """ARM's `--precision` leaves them fp32 (no vectorized kernel measured there); x86 asks."""
    mod = import_onnx(_block()).mod
    mod = make_pass("fold-constants").run(mod).module
    opts = {"precision": "bf16", "depthwise": str(depthwise).lower()}
    result = make_pass("lower-precision", opts).run(mod)
    assert result.stats["depthwise_convs"] == (2 if depthwise else 0)
    assert result.stats["pointwise_convs"] == 2
    convs = _tvm.op_counts(result.module).get("relax.nn.conv2d", 0)
    assert convs == (0 if depthwise else 2)


def test_symbolic_image_size_keeps_depthwise_convs_fp32(tmp_path):
    """One build for 14..28 pixels: the pointwise convs bf16, the depthwise convs fp32 (no
    kernel for a symbolic size; the report says why), and the depthwise conv's output, whose
    size is an expression of the input's ((s - 1) // 2 + 1), handed to the bf16 conv as bits."""
    model = _block(size="s")
    art = graphopt.compile(
        model,
        tmp_path / "sym",
        input_shapes={"x": (1, 8, "s:14..28", "s")},
        compression=[Precision(PrecisionOptions("bf16", edges=True))],
    )
    rows = {r["layer"]: r for r in art.manifest["precision"]["layers"]}
    assert [rows[f"conv2d_{i}"]["precision"] for i in range(4)] == ["bf16", "fp32", "bf16", "fp32"]
    assert rows["conv2d_1"]["reason"] == "dynamic shape"
    stats = {r["pass"]: r["stats"] for r in art.manifest["report"]["passes"]}
    assert stats["precision-handoff"]["producers"] >= 1
    onnx.save(model, tmp_path / "block.onnx")
    session = ort_session(tmp_path / "block.onnx")
    for size in (14, 23, 28):
        x = np.random.default_rng(size).standard_normal((1, 8, size, size)).astype(np.float32)
        ref = ort_run(session, {"x": x})["y"]
        got = art.run({"x": x})["y"]
        assert np.abs(got - ref).max() < 0.03 * np.abs(ref).max()


def test_flops_counted_from_the_recipes():
    """The report counts the ops' multiply-adds, not the rounding and padding loops."""
    from graphopt import precision_ops as P
    from graphopt.kernel_flops import recipe_flops

    spec = SPECS["5x5_stride2_bits"]
    assert recipe_flops(portable_kernel(spec), {}) == 2 * (2 * 6 * 5 * 16) * 25
    matmul = P.PrecisionMatmulSpec((1, "seq", 64), 32, "bf16")
    assert recipe_flops(P.portable_kernel(matmul), {"seq": 10}) == 2 * 10 * 64 * 32
