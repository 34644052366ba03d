"""`precision-handoff`: activations read only by 16-bit matmuls stored as 16-bit bit patterns by
their producer. The kernels reading bit patterns (portable, fp32-FMA, vdpbf16ps) equal the ones
rounding fp32 bit for bit, and those writing them store numpy's rounding of their fp32 results;
the rounding kernel equals the matmuls' own rounding on special values; a small CNN hands its
depthwise conv's output to two pointwise convs and one pointwise conv's output to another, with
the same numbers as the build without the pass (and onnxruntime's within bf16)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import _tvm
from graphopt import precision_ops as P
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.pass_infra import PassResult
from graphopt.passes import precision_handoff
from graphopt.reference import ort_run, ort_session
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision import kernels as K

ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
ZNVER3 = {**ZNVER4, "mcpu": "znver3"}
HOST_BF16 = {"avx512bf16", "avx512f"} <= _tvm.host_cpu_features()
KERNELS = {
    "portable": (P.portable_kernel, lambda wb, spec: wb, ZNVER3),
    "fma": (K.matmul16_kernel, K.pack_panels, ZNVER3),
    "dpbf16": (D.dpbf16_kernel, D.pack_pairs, ZNVER4),
}
SHAPES = {"even_k": ((2, 5, 48), 40), "odd_k": ((3, 37), 21), "gemv": ((1, 64), 17)}


def _build(func, target):
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(module, target=_tvm.make_target(target))


def _run(kernel: str, spec, x, wb, bias) -> np.ndarray:
    make, pack, target = KERNELS[kernel]
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.uint16 if spec.out_bits else np.float32))
    args = [x, pack(wb, spec), bias]
    _build(make(spec), target)["main"](*(tvm.runtime.tensor(a) for a in args), out)
    return out.numpy()


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_bits_input_equals_rounded_input(kernel, shape, precision):
    if kernel == "dpbf16" and precision != "bf16":
        pytest.skip("vdpbf16ps multiplies bf16 only")
    if kernel == "dpbf16" and not HOST_BF16:
        pytest.skip("this host has no AVX512_BF16")
    (x_shape, n), rng = SHAPES[shape], np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(np.float32)
    wb = P.to_bits(rng.standard_normal((x_shape[-1], n)).astype(np.float32), precision)
    bias = rng.standard_normal(n).astype(np.float32)
    spec = P.PrecisionMatmulSpec(x_shape, n, precision, bias=True, lo=0.0, hi=6.0)
    bits = dataclasses.replace(spec, x_bits=True)
    xb = P.to_bits(x, precision)
    want = _run(kernel, spec, x, wb, bias)
    assert np.array_equal(_run(kernel, bits, xb, wb, bias), want)
    assert np.array_equal(P.reference_matmul(xb, wb, bits), P.reference_matmul(x, wb, spec))
    out_bits = dataclasses.replace(bits, out_bits=True)  # reads and writes bit patterns
    assert np.array_equal(_run(kernel, out_bits, xb, wb, bias), P.to_bits(want, precision))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_bits_kernel_rounds_like_the_matmul(precision):
    """The stored bits widen to exactly what the matmul's own rounding gives (`round_kernel`),
    NaNs included, and equal numpy's bits (NaN payloads aside): random bit patterns (NaNs,
    Infs, denormals among them), ties, overflow, -0."""
    rng = np.random.default_rng(0)
    u = rng.integers(0, 2**32, 40_000, dtype=np.uint64).astype(np.uint32)
    special = [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, -np.inf, np.nan, 1e-40, 7e4]
    x = np.concatenate([u.view(np.float32), np.array(special, np.float32)]).reshape(1, -1)
    bits = tvm.runtime.tensor(np.zeros(x.shape, np.uint16))
    _build(P.bits_kernel(x.shape, precision), ZNVER3)["main"](tvm.runtime.tensor(x), bits)
    rounded = tvm.runtime.tensor(np.zeros_like(x))
    _build(P.round_kernel(x.shape, precision), ZNVER3)["main"](tvm.runtime.tensor(x), rounded)
    widened = P.from_bits(bits.numpy(), precision)
    assert np.array_equal(widened.view(np.uint32), rounded.numpy().view(np.uint32))
    want = P.to_bits(x, precision)
    ok = ~np.isnan(P.from_bits(want, precision))
    assert np.array_equal(np.isnan(widened), ~ok)
    assert np.array_equal(bits.numpy()[ok], want[ok])


# -- the pass in a compiled CNN -------------------------------------------------------------


def _conv(name, x, w, b, group=1, pad=0):
    return helper.make_node(
        "Conv", [x, w, b], [name], group=group, kernel_shape=list(w_shape(w)), pads=[pad] * 4
    )


def w_shape(w):
    return (3, 3) if w.startswith("dw") else (1, 1)


def _model(rng) -> onnx.ModelProto:
    """x -> pw1 -> depthwise + Clip (d) -> pw2 and pw3 (d's only users: handed off) -> add ->
    depthwise + Relu (e, also an output: kept fp32) -> pw4 (read only by pw5: stores bits)
    -> pw5."""
    c = 16
    shapes = {"pw1": (c, 8, 1, 1), "dw1": (c, 1, 3, 3), "pw2": (c, c, 1, 1),
              "pw3": (c, c, 1, 1), "dw2": (c, 1, 3, 3), "pw4": (8, c, 1, 1),
              "pw5": (8, 8, 1, 1)}  # fmt: skip
    inits = []
    for name, shape in shapes.items():
        w = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
        inits += [numpy_helper.from_array(w, name), numpy_helper.from_array(
            rng.standard_normal(shape[0]).astype(np.float32) * 0.1, f"{name}_b")]  # fmt: skip
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [
        _conv("a", "x", "pw1", "pw1_b"),
        _conv("dc", "a", "dw1", "dw1_b", group=c, pad=1),
        helper.make_node("Clip", ["dc", "lo", "hi"], ["d"]),
        _conv("p2", "d", "pw2", "pw2_b"),
        _conv("p3", "d", "pw3", "pw3_b"),
        helper.make_node("Add", ["p2", "p3"], ["s"]),
        _conv("ec", "s", "dw2", "dw2_b", group=c, pad=1),
        helper.make_node("Relu", ["ec"], ["e"]),
        _conv("f", "e", "pw4", "pw4_b"),
        _conv("y", "f", "pw5", "pw5_b"),
    ]
    graph = helper.make_graph(
        nodes, "handoff",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 16]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, c, 8, 16])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cnn_hands_off_with_the_same_numbers(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    model = _model(rng)
    compression = [Precision(PrecisionOptions("bf16", edges=True))]
    art = graphopt.compile(model, tmp_path / "handoff", compression=compression)
    stats = {r["pass"]: r["stats"] for r in art.manifest["report"]["passes"]}
    # x86 makes the depthwise convs 16-bit too: bits from the input's transpose to pw1, pw1
    # to dw1, dw1 to pw2 and pw3, pw3 (its residual add with pw2 folded in) to dw2, relu(e)
    # to pw4, pw4 to pw5; e itself (an output) stays fp32
    assert stats["precision-handoff"] == {"producers": 2, "matmul_producers": 4, "matmuls": 7}

    def off(self, mod):
        return PassResult(mod, False, {})

    monkeypatch.setattr(precision_handoff.PrecisionHandoff, "run", off)
    plain = graphopt.compile(model, tmp_path / "plain", compression=compression)
    feeds = {"x": rng.standard_normal((1, 8, 8, 16)).astype(np.float32)}
    got, want = art.run(feeds), plain.run(feeds)
    for name in ("y", "e"):
        assert np.array_equal(got[name], want[name])
    onnx.save(model, tmp_path / "handoff.onnx")
    ref = ort_run(ort_session(tmp_path / "handoff.onnx"), feeds)["y"]
    assert np.abs(got["y"] - ref).max() < 0.05 * np.abs(ref).max()  # bf16 against fp32
