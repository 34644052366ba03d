"""int4 with symbolic dims: one build's int4 kernels run every row count in range.

The W4 x fp32 and W4A8 CPU kernels and the portable ones, built once for x [1, seq, K], are
checked bit for bit against their numpy models at several row counts (one row, where the
kernels decode the weights at each load; a partial register tile; several tiles split over
tasks). A transformer block compiled with a symbolic sequence and `--quantize int4` gives
what its static int4 builds give at the same lengths (up to the fp32 kernels' schedules),
with round-to-nearest and with GPTQ calibrated on samples of one length; so does a CNN with
a symbolic batch and image size, its 1x1 convs int4 and its window convs int8.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm

import graphopt
from graphopt import _tvm
from graphopt.compress.int4.method import Int4, Int4Options
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.int4_a8_ops import reference_a8_matmul
from graphopt.int4_ops import Int4MatmulSpec, portable_kernel, reference_matmul
from graphopt.targets.cpu.int4 import a8_kernels as A8
from graphopt.targets.cpu.int4 import kernels as K4
from graphopt.targets.cpu.int8 import kernels as K8
from tests import model_builders as mb

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif("fma" not in _tvm.host_cpu_features(), reason="the models assume FMA"),
]

K_IN, N_OUT = 70, 40  # K: two groups of 32 and a tail; N: a panel and a part of one
ROWS = (1, 5, 37)
HOST = _tvm.host_cpu_features()
A8_ISAS = [
    pytest.param("vnni", "icelake-server", marks=pytest.mark.skipif(
        not {"avx512vnni", "avx512bw", "avx512f"} <= HOST, reason="no VNNI")),
    pytest.param("avx2", "znver3", marks=pytest.mark.skipif("avx2" not in HOST, reason="no AVX2")),
    pytest.param("generic", "x86-64"),  # decodes a panel once into q - z words, as sdot does
]  # fmt: skip


def _build(func, mcpu: str = ""):
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu or _tvm.host_cpu_name()})
    func = func.with_attr("global_symbol", "main")
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=target)


def _natural(rng, symmetric: bool):
    w = rng.standard_normal((K_IN, N_OUT)).astype(np.float32)
    q = quantize_rtn(w, 32, symmetric)
    return q.packed, q.scales, (np.zeros(1, np.uint8) if symmetric else q.zeros)


def _call(lib, x, consts) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros((*x.shape[:-1], N_OUT), np.float32))
    lib["main"](tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in consts), out)
    return out.numpy()


def _rows(rng, rows: int) -> np.ndarray:
    return rng.standard_normal((1, rows, K_IN)).astype(np.float32)


@pytest.mark.parametrize("isa,mcpu", A8_ISAS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_w4a8_kernel_exact_at_every_row_count(isa, mcpu, symmetric):
    spec = Int4MatmulSpec((1, "seq", K_IN), N_OUT, 32, symmetric, act="int8")
    plan = A8.plan_for(spec, K8.ISAS[isa])
    lib = _build(A8.int4_a8_matmul_kernel(spec, plan), mcpu)
    rng = np.random.default_rng(1)
    natural = _natural(rng, symmetric)
    consts = A8.pack_a8(*natural, spec, plan)
    for rows in ROWS:
        x = _rows(rng, rows)
        static = Int4MatmulSpec(x.shape, N_OUT, 32, symmetric, act="int8")
        want = reference_a8_matmul(x, *natural, static)
        np.testing.assert_array_equal(_call(lib, x, consts), want, err_msg=f"rows={rows}")


@pytest.mark.parametrize("symmetric", [True, False])
def test_w4_fp32_kernel_exact_at_every_row_count(symmetric):
    spec = Int4MatmulSpec((1, "seq", K_IN), N_OUT, 32, symmetric)
    lib = _build(K4.int4_matmul_kernel(spec))
    rng = np.random.default_rng(2)
    natural = _natural(rng, symmetric)
    consts = K4.pack_panels(*natural, spec)
    for rows in ROWS:
        x = _rows(rng, rows)
        want = reference_matmul(x, *natural, Int4MatmulSpec(x.shape, N_OUT, 32, symmetric))
        np.testing.assert_array_equal(_call(lib, x, consts), want, err_msg=f"rows={rows}")


@pytest.mark.parametrize("act", ["float32", "int8"])
def test_portable_kernels_at_every_row_count(act):
    spec = Int4MatmulSpec((1, "seq", K_IN), N_OUT, 32, False, act=act)
    lib = _build(portable_kernel(spec))
    rng = np.random.default_rng(3)
    natural = _natural(rng, False)
    for rows in ROWS[:2]:
        x = _rows(rng, rows)
        static = Int4MatmulSpec(x.shape, N_OUT, 32, False, act=act)
        if act == "int8":
            np.testing.assert_array_equal(
                _call(lib, x, natural), reference_a8_matmul(x, *natural, static)
            )
        else:  # scalar FMAs or not, as LLVM chooses: equal up to one rounding a step
            want = reference_matmul(x, *natural, static)
            np.testing.assert_allclose(_call(lib, x, natural), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Whole models


def _block_feeds(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, n, mb.TRANSFORMER["dim"])).astype(np.float32)
    return {"x": x, "mask": mb.causal_mask(seq=n)}


def _stats(art, name: str) -> dict:
    return next(r["stats"] for r in art.manifest["report"]["passes"] if r["pass"] == name)


def _first(outputs) -> np.ndarray:
    return outputs[0] if isinstance(outputs, list) else next(iter(outputs.values()))


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_symbolic_block_equals_its_static_builds(tmp_path, method):
    """Sequence 1..48 against static builds at 24 (the calibration samples' length) and 33
    (round-to-nearest only):
    GPTQ calibrates the same weights either way and the int4 kernels are exact, so only the
    fp32 kernels' schedules differ (ulps)."""
    model = mb.transformer_block(seq="seq")
    cal = tmp_path / "cal.npz"
    x = np.random.default_rng(7).standard_normal((6, 24, mb.TRANSFORMER["dim"]))
    np.savez(cal, x=x.astype(np.float32), mask=np.stack([mb.causal_mask(seq=24)] * 6))
    options = Int4Options(method=method, calibration=str(cal) if method == "gptq" else None)

    def build(name, seq):
        shapes = {"x": (1, seq, mb.TRANSFORMER["dim"])}
        return graphopt.compile(
            model, tmp_path / name, input_shapes=shapes, compression=[Int4(options)]
        )

    sym = build("symbolic", "1..48")
    assert sym.manifest["inputs"][0]["shape"][1] == "seq"
    materialized = _stats(sym, "materialize-int4")
    assert materialized["calls"] == _stats(sym, "lower-int4")["int4_matmuls"] > 0
    assert materialized["w4a8_kernels"] == materialized["kernels"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (24, 33) if method == "rtn" else (24,):  # a static build calibrates at its size
        feeds = _block_feeds(n)
        got = _first(sym.run(feeds))
        static = _first(build(f"s{n}", n).run(feeds))
        np.testing.assert_allclose(got, static, rtol=1e-5, atol=1e-5, err_msg=f"{n}")
        want = session.run(None, feeds)[0]
        assert np.abs(got - want).max() < 0.25 * np.abs(want).max(), n
    for n in (1, 48):  # the ends of the range run
        assert _first(sym.run(_block_feeds(n))).shape == (1, n, mb.TRANSFORMER["dim"])


def _cnn_1x1(batch, size):
    """A stem conv, an expansion 1x1 conv, a depthwise conv, a projection 1x1 conv, pooling
    and a classifier: int4 takes the 1x1 convs and the classifier, int8 the window convs."""
    g = mb.GraphBuilder(11)
    h = g.op("Relu", [g.conv("x", 3, 16, 3, pad=1, stride=2)])
    h = g.op("Relu", [g.conv(h, 16, 64, 1)])
    h = g.op("Relu", [g.conv(h, 64, 64, 3, pad=1, group=64)])
    h = g.conv(h, 64, 32, 1)
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h])], axis=1)
    logits = g.op("Gemm", [h, g.weight([10, 32], 0.25), g.weight([10], 0.1, "b")], transB=1)
    x = mb._value_info("x", [batch, 3, size, size])
    return g.model([x], [("logits", logits, [batch, 10])], "cnn_1x1")


def test_symbolic_cnn_equals_its_static_builds(tmp_path):
    model = _cnn_1x1("b", "s")
    options = Int4Options(method="rtn", windows="int8")

    def build(name, b, s):
        shapes = {"x": (b, 3, s, s)}
        return graphopt.compile(
            model, tmp_path / name, input_shapes=shapes, compression=[Int4(options)]
        )

    sym = build("symbolic", "1..4", "8..32")
    lowered = _stats(sym, "lower-int4")
    assert (lowered["int4_matmuls"], lowered["int8_window_convs"]) == (3, 2)
    for b, s in ((1, 16), (3, 22)):
        x = np.random.default_rng(s).standard_normal((b, 3, s, s)).astype(np.float32)
        got = _first(sym.run({"x": x}))
        static = _first(build(f"s{b}_{s}", b, s).run({"x": x}))
        np.testing.assert_allclose(got, static, rtol=1e-5, atol=1e-5, err_msg=f"{b}x{s}")


def test_symbolic_int4_embedding_table(tmp_path):
    model = mb.embedding_matmul(seq="seq")
    method = [Int4(Int4Options(method="rtn"))]
    sym = graphopt.compile(
        model, tmp_path / "sym", input_shapes={"ids": (1, "1..64")}, compression=method
    )
    assert _stats(sym, "lower-int4")["int4_embeddings"] == 1
    for n in (1, 37):
        ids = np.random.default_rng(n).integers(0, 1024, (1, n)).astype(np.int64)
        static = graphopt.compile(
            model, tmp_path / f"s{n}", input_shapes={"ids": (1, n)}, compression=method
        )
        got = _first(sym.run({"ids": ids}))
        assert got.shape == (1, n, 32)
        np.testing.assert_allclose(got, _first(static.run({"ids": ids})), rtol=1e-5, atol=1e-5)
