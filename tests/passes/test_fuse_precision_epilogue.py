"""`fuse-precision-epilogue` and the 16-bit matmul kernels' epilogue: bias, clamp and residual
bit for bit against numpy in every kernel (portable, fp32-FMA, vdpbf16ps), GELU within the
polynomial's rounding; the pass folding an ONNX model's bias adds, Clip / Relu, erf-GELU and
skip adds into the kernels, and the compiled model against numpy and onnxruntime."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import _tvm
from graphopt import precision_ops as P
from graphopt.compress.precision.method import Precision, PrecisionOptions
from graphopt.precision_epilogue import reference_epilogue
from graphopt.reference import ort_run, ort_session
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision import kernels as K

ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
ZNVER3 = {**ZNVER4, "mcpu": "znver3"}
HOST_BF16 = {"avx512bf16", "avx512f"} <= _tvm.host_cpu_features()

EPILOGUES = {
    "bias_relu6_residual": {"bias": True, "lo": 0.0, "hi": 6.0, "residual": True},
    "bias_gelu": {"bias": True, "gelu": True},
    "relu_only": {"lo": 0.0},
    "bias_residual": {"bias": True, "residual": True},
}
KERNELS = {
    "portable": (P.portable_kernel, lambda wb, spec: wb, ZNVER3),
    "fma": (K.matmul16_kernel, K.pack_panels, ZNVER3),
    "dpbf16": (D.dpbf16_kernel, D.pack_pairs, ZNVER4),
}


def _run_kernel(kernel: str, spec, x, wb, bias, residual) -> np.ndarray:
    make, pack, target = KERNELS[kernel]
    func = make(spec).with_attr("global_symbol", "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=_tvm.make_target(target))
    args = [x, pack(wb, spec)] + [bias] * spec.bias + [residual] * spec.residual
    out = tvm.runtime.tensor(np.zeros(spec.out_shape, np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in args), out)
    return out.numpy()


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_epilogue_vs_numpy(kernel, epilogue):
    if kernel == "dpbf16" and not HOST_BF16:
        pytest.skip("this host has no AVX512_BF16")
    rng = np.random.default_rng(5)
    spec = P.PrecisionMatmulSpec((2, 7, 45), 37, "bf16")  # N and K tails, two row tiles
    spec = dataclasses.replace(spec, **EPILOGUES[epilogue])
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    wb = P.to_bits(rng.standard_normal((45, 37)).astype(np.float32) / 4, "bf16")
    bias = rng.standard_normal(37).astype(np.float32)
    residual = rng.standard_normal(spec.out_shape).astype(np.float32)
    got = _run_kernel(kernel, spec, x, wb, bias, residual)
    want = reference_epilogue(P.reference_matmul(x, wb, spec), spec, bias, residual)
    if spec.gelu:  # the polynomial's operations may contract into FMAs: within rounding
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    else:
        assert np.array_equal(got, want)
    if spec.lo == 0.0:
        assert got.min() >= 0 or spec.residual


def test_reference_gelu_is_close_to_erf_gelu():
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    spec = dataclasses.replace(P.PrecisionMatmulSpec((1, 1), 1001, "bf16"), gelu=True)
    exact = x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(reference_epilogue(x[None], spec)[0], exact, atol=2e-6)


# -- the pass on an ONNX model -------------------------------------------------------------------

R, K_IN, N1, N2, N3, N4 = 10, 40, 24, 48, 20, 16


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {}
    for name, (k, n) in {"1": (K_IN, N1), "2": (N1, N2), "3": (N2, N3), "4": (N3, N4)}.items():
        w[f"W{name}"] = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
        w[f"b{name}"] = rng.standard_normal(n).astype(np.float32) * 0.1
    return w


def _model(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """bias + Clip + skip add; bias (constant first) + erf GELU; bias only; Relu only."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["a1"]),
        helper.make_node("Clip", ["a1", "zero", "six"], ["c1"]),
        helper.make_node("Add", ["c1", "skip"], ["y1"]),
        helper.make_node("MatMul", ["y1", "W2"], ["h2"]),
        helper.make_node("Add", ["b2", "h2"], ["a2"]),
        helper.make_node("Div", ["a2", "sqrt2"], ["d2"]),
        helper.make_node("Erf", ["d2"], ["e2"]),
        helper.make_node("Add", ["e2", "one"], ["o2"]),
        helper.make_node("Mul", ["a2", "o2"], ["m2"]),
        helper.make_node("Mul", ["m2", "half"], ["g2"]),
        helper.make_node("MatMul", ["g2", "W3"], ["h3"]),
        helper.make_node("Add", ["h3", "b3"], ["a3"]),
        helper.make_node("MatMul", ["a3", "W4"], ["h4"]),
        helper.make_node("Relu", ["h4"], ["y"]),
    ]
    consts = [numpy_helper.from_array(v, k) for k, v in w.items()]
    consts += [
        c("zero", 0.0),
        c("six", 6.0),
        c("sqrt2", math.sqrt(2)),
        c("one", 1.0),
        c("half", 0.5),
    ]
    graph = helper.make_graph(
        nodes, "epilogues",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, R, K_IN]),
         helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, R, N1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, R, N4])],
        consts,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _numpy(w, x, skip) -> np.ndarray:
    """The compiled model's arithmetic: each layer the 16-bit op, then its epilogue."""
    steps = [
        ("1", {"bias": True, "lo": 0.0, "hi": 6.0, "residual": True}),
        ("2", {"bias": True, "gelu": True}),
        ("3", {"bias": True}),
        ("4", {"lo": 0.0}),
    ]
    for name, epi in steps:
        spec = P.PrecisionMatmulSpec(x.shape, w[f"W{name}"].shape[1], "bf16")
        spec = dataclasses.replace(spec, **epi)
        y = P.reference_matmul(x, P.to_bits(w[f"W{name}"], "bf16"), spec)
        x = reference_epilogue(y, spec, w[f"b{name}"], skip)
    return x


def test_pass_folds_every_epilogue_and_matches_numpy(tmp_path):
    w = _weights()
    model = _model(w)
    compression = [Precision(PrecisionOptions("bf16", edges=True))]
    art = graphopt.compile(model, tmp_path / "epi", compression=compression)
    stats = {r["pass"]: r["stats"] for r in art.manifest["report"]["passes"]}
    assert stats["fuse-precision-epilogue"] == {
        "fused": 4, "bias": 3, "gelu": 1, "clamp": 2, "residual": 1
    }  # fmt: skip
    rng = np.random.default_rng(9)
    feeds = {
        "x": rng.standard_normal((1, R, K_IN)).astype(np.float32),
        "skip": rng.standard_normal((1, R, N1)).astype(np.float32),
    }
    got = art.run(feeds)["y"]
    np.testing.assert_allclose(got, _numpy(w, feeds["x"], feeds["skip"]), rtol=1e-5, atol=1e-5)
    onnx.save(model, tmp_path / "epi.onnx")
    ref = ort_run(ort_session(tmp_path / "epi.onnx"), feeds)["y"]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()  # bf16 against fp32


def test_a_bias_add_with_two_users_stops_the_chain(tmp_path):
    """The bias add's result also feeds the output: the matmul takes the bias (it is the
    tail's value) but not the clip after it."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((K_IN, N1)) / 8).astype(np.float32)
    b = rng.standard_normal(N1).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Add", ["a", "r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "two_users",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, R, K_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, R, N1])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compression = [Precision(PrecisionOptions("bf16", edges=True))]
    art = graphopt.compile(model, tmp_path / "two", compression=compression)
    stats = {r["pass"]: r["stats"] for r in art.manifest["report"]["passes"]}
    assert stats["fuse-precision-epilogue"]["fused"] == 1
    assert stats["fuse-precision-epilogue"]["clamp"] == 0
    x = rng.standard_normal((1, R, K_IN)).astype(np.float32)
    spec = P.PrecisionMatmulSpec(x.shape, N1, "bf16")
    a = P.reference_matmul(x, P.to_bits(w, "bf16"), spec) + b
    np.testing.assert_allclose(art.run({"x": x})["y"], a + np.maximum(a, 0), rtol=1e-6, atol=1e-6)
