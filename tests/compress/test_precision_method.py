"""`compile --precision bf16|fp16|mixed`: the artifact against numpy's 16-bit arithmetic, the
stored weight bytes, first/last layer defaults, the --max-drop budget keeping a fragile layer
fp32, the target gate's note, composition with int8, bad flags."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import precision_ops as P
from graphopt.cli import main
from graphopt.precision_window import Window, reference_window

D, OUT, ROWS = 64, 16, 8
ZNVER3 = ["--target-opt", "mcpu=znver3"]


def _model(ws: list[np.ndarray], sub: bool = False) -> onnx.ModelProto:
    """x [8, 64] -> MatMul chain with Relu between; sub: y = Relu(x@A - x@B) @ C."""
    names = [f"w{i}" for i in range(len(ws))]
    if sub:
        nodes = [
            helper.make_node("MatMul", ["x", "w0"], ["a"]),
            helper.make_node("MatMul", ["x", "w1"], ["b"]),
            helper.make_node("Sub", ["a", "b"], ["d"]),
            helper.make_node("Relu", ["d"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ]
    else:
        nodes, prev = [], "x"
        for i, name in enumerate(names):
            out = "y" if i == len(ws) - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [prev, name], [out]))
            if out != "y":
                nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
                prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, ws[-1].shape[1]])],
        [numpy_helper.from_array(w, n) for w, n in zip(ws, names)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _chain_weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(D, D), (D, D), (D, OUT)]
    return [(rng.standard_normal(s) / 8).astype(np.float32) for s in shapes]


def _fragile_weights(seed: int = 1) -> list[np.ndarray]:
    """A = 1 + 0.01 R and B = 1: x@A - x@B is 0.01 x@R, which bf16 weights (2^-8 steps
    near 1) or activations destroy; C after it is an ordinary layer."""
    rng = np.random.default_rng(seed)
    a = (1 + 0.01 * rng.standard_normal((D, D))).astype(np.float32)
    b = np.ones((D, D), np.float32)
    c = (rng.standard_normal((D, OUT)) / 8).astype(np.float32)
    return [a, b, c]


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, ROWS, D)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    onnx.save(_model(_chain_weights()), root / "chain.onnx")
    onnx.save(_model(_fragile_weights(), sub=True), root / "fragile.onnx")
    np.savez(root / "calib.npz", x=_x(16, 2))
    return root


def _compile(files, model: str, name: str, *flags: str):
    out = files / name
    assert main(["compile", str(files / model), "-o", str(out), *flags]) == 0
    return graphopt.load(out), json.loads((out / "manifest.json").read_text())


def _numpy_chain(x: np.ndarray, ws: list[np.ndarray], precision: str, low: list[bool]):
    """The artifact's arithmetic in numpy: 16-bit layers as the op defines them."""
    for i, w in enumerate(ws):
        if low[i]:
            spec = P.PrecisionMatmulSpec(x.shape, w.shape[1], precision)
            x = P.reference_matmul(x, P.to_bits(w, precision), spec)
        else:
            x = x @ w
        if i < len(ws) - 1:
            x = np.maximum(x, 0)
    return x


@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_every_layer_16bit_matches_numpy(files, precision, capsys):
    art, manifest = _compile(
        files, "chain.onnx", precision, "--precision", precision, "--precision-edges", *ZNVER3
    )
    m = manifest["precision"]
    assert [r["precision"] for r in m["layers"]] == [precision] * 3
    assert m["size"]["ratio"] == 0.5
    x = _x(1, 5)[0]
    got = art.run({"x": x})["y"]
    ws = _chain_weights()
    want = _numpy_chain(x, ws, precision, [True] * 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # the sums' order, nothing else
    fp32 = _numpy_chain(x, ws, precision, [False] * 3)
    assert np.abs(got - fp32).max() > 10 * np.abs(got - want).max()
    text = capsys.readouterr().out
    assert f"precision {precision}: 3/3 layers" in text and "note: " in text
    passes = {r["pass"]: r["stats"] for r in manifest["report"]["passes"]}
    assert passes["materialize-precision"]["calls"] == 3


def test_defaults_keep_first_and_last_fp32_and_store_half(files):
    art, manifest = _compile(files, "chain.onnx", "edges", "--precision", "bf16", *ZNVER3)
    rows = manifest["precision"]["layers"]
    assert [(r["precision"], r["reason"]) for r in rows] == [
        ("fp32", "first layer"),
        ("bf16", None),
        ("fp32", "last layer"),
    ]
    assert rows[1]["bytes"] == D * D * 2 == rows[1]["fp32_bytes"] // 2
    x = _x(1, 6)[0]
    want = _numpy_chain(x, _chain_weights(), "bf16", [False, True, False])
    np.testing.assert_allclose(art.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


def test_edges_measured_safe_with_data_go_16bit(files, capsys):
    """With calibration data and no budget, the first and last layer are measured in the
    model with its other layers 16-bit: the chain's are ordinary (16-bit), the fragile
    model's first layer (x@A) stays fp32."""
    calib = ("--calibration", str(files / "calib.npz"), "--quant-metric", "cosine")
    _art, manifest = _compile(files, "chain.onnx", "measured", "--precision", "bf16", *calib)
    m = manifest["precision"]
    assert [r["precision"] for r in m["layers"]] == ["bf16"] * 3
    assert m["accuracy"]["measured"] == ["matmul_0", "matmul_2"]
    out = capsys.readouterr().out
    assert "first and last layer measured in the bf16 model (min_cosine" in out
    assert "artifact against fp32" in out
    _art, manifest = _compile(files, "fragile.onnx", "fragile16", "--precision", "bf16", *calib)
    rows = {r["layer"]: r for r in manifest["precision"]["layers"]}
    assert (rows["matmul_0"]["precision"], rows["matmul_0"]["reason"]) == (
        "fp32",
        "first layer, measured",
    )
    assert rows["matmul_1"]["precision"] == rows["matmul_2"]["precision"] == "bf16"


def test_library_stores_the_16bit_weights(files, tmp_path):
    """The library itself shrinks by the weight bytes saved (a 1 MiB fp32 matmul)."""
    rng = np.random.default_rng(3)
    ws = [(rng.standard_normal((D, 4096)) / 8).astype(np.float32)]
    ws.append((rng.standard_normal((4096, OUT)) / 64).astype(np.float32))
    onnx.save(_model(ws), files / "wide.onnx")
    _a, fp32 = _compile(files, "wide.onnx", "wide32", *ZNVER3)
    _b, bf16 = _compile(files, "wide.onnx", "wide16", "--precision", "bf16", "--precision-edges")
    saved = (D * 4096 + 4096 * OUT) * 2
    size32 = (files / "wide32" / fp32["library"]).stat().st_size
    size16 = (files / "wide16" / bf16["library"]).stat().st_size
    assert size32 - size16 > 0.9 * saved


def test_budget_keeps_the_fragile_layer_fp32(files, capsys):
    _art, manifest = _compile(
        files, "fragile.onnx", "mixed", "--precision", "mixed", "--max-drop", "1",
        "--calibration", str(files / "calib.npz"), "--quant-metric", "cosine", *ZNVER3,
    )  # fmt: skip
    m = manifest["precision"]
    by_name = {r["layer"]: r for r in m["layers"]}
    assert by_name["matmul_0"]["precision"] == "fp32"  # x@A: the fragile one
    assert by_name["matmul_0"]["reason"] in ("max-drop", "artifact budget")
    assert by_name["matmul_2"]["precision"] == "bf16"  # C: ordinary
    a = m["accuracy"]
    assert a["all_16bit"] < a["fp32"] - 1  # bf16 everywhere misses the budget ...
    assert a["artifact"] >= a["fp32"] - 1 - 1e-6  # ... what ships meets it
    assert a["order"][0] in ("matmul_0", "matmul_1")
    assert "accuracy (min_cosine" in capsys.readouterr().out


def test_gate_note_without_avx512_bf16(files):
    _art, manifest = _compile(files, "chain.onnx", "gate3", "--precision", "bf16", *ZNVER3)
    assert manifest["precision"]["note"] == "bf16 computed in fp32 on this target: no AVX512_BF16"


def test_gate_note_with_avx512_bf16_compile_only(files):
    """mcpu=znver4 has the instruction (the note says so) and builds here without running."""
    out = files / "gate4"
    flags = ["--precision", "bf16", "--target-opt", "mcpu=znver4"]
    assert main(["compile", str(files / "chain.onnx"), "-o", str(out), *flags]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "vdpbf16ps (AVX512_BF16)" in manifest["precision"]["note"]


def test_composes_with_int8(files):
    """int8 first (dynamic per row, the middle layer skipped), then --precision on what int8
    left fp32: one model with int8 and bf16 layers."""
    pipeline = "O2,quantize{mode=dynamic,granularity=row,skip=matmul_1},lower-int8{layout=NHWC}"
    art, manifest = _compile(
        files, "chain.onnx", "int8bf16", "--pipeline", pipeline, "--precision", "bf16",
        "--precision-edges", *ZNVER3,
    )  # fmt: skip
    passes = {r["pass"]: r["stats"] for r in manifest["report"]["passes"]}
    assert passes["lower-int8"]["lowered_matmul"] == 2
    assert passes["lower-precision"]["matmuls"] == 1  # the layer int8 skipped
    rows = manifest["precision"]["layers"]
    assert [(r["what"], r["precision"]) for r in rows] == [(f"matmul [{D}, {D}]", "bf16")]
    x = _x(1, 9)[0]
    want = _numpy_chain(x, _chain_weights(), "bf16", [False, True, False])
    got = art.run({"x": x})["y"]
    cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.999


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--precision", "bf16", "--target", "cuda"], "--precision is for CPU targets"),
        (["--precision", "mixed"], "--precision mixed needs --max-drop"),
        (["--precision", "bf16", "--max-drop", "1"], "--max-drop needs data"),
    ],
)
def test_bad_flags_are_one_line(files, flags, message, capsys):
    code = main(["compile", str(files / "chain.onnx"), "-o", str(files / "bad"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err


def _cnn(seed: int = 4) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x [1, 8, 6, 6] -> Conv 1x1 (8 -> 16) -> Relu -> Conv 3x3 pad 1 (16 -> 16) -> y."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 8, 1, 1)) / 3).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w1, w2


def _conv3x3(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """NCHW 3x3 conv, padding 1, in float64."""
    _n, _c, h, wd = x.shape
    p = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((1, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", p[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    return out


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_pointwise_conv_is_the_16bit_matmul_over_channels(files, layout):
    model, w1, w2 = _cnn()
    onnx.save(model, files / "cnn.onnx")
    art, manifest = _compile(
        files, "cnn.onnx", f"cnn_{layout}", "--precision", "bf16", "--precision-edges",
        *ZNVER3, "--target-opt", f"layout={layout}",
    )  # fmt: skip
    rows = manifest["precision"]["layers"]
    assert [(r["precision"], r["reason"]) for r in rows] == [("bf16", None), ("bf16", None)]
    x = np.random.default_rng(5).standard_normal((1, 8, 6, 6)).astype(np.float32)
    xt = x.transpose(0, 2, 3, 1)  # the op runs over channels: [N, H, W, C] @ W^T
    spec = P.PrecisionMatmulSpec(xt.shape, 16, "bf16")
    h = np.maximum(P.reference_matmul(xt, P.to_bits(w1[:, :, 0, 0].T, "bf16"), spec), 0)
    win = Window(h.shape, (3, 3), (1, 1), (1, 1, 1, 1))  # the 3x3 conv: its windows' matmul
    want = reference_window(h, w2, win, "bf16").transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(art.run({"x": x})["y"], want)
    near = _conv3x3(h.transpose(0, 3, 1, 2), w2)  # and within bf16 of the fp32 conv
    np.testing.assert_allclose(want, near, rtol=0.03, atol=0.03 * np.abs(near).max())


@pytest.mark.parametrize("precision", P.PRECISIONS)
def test_embedding_table_gathers_16bit_rows(files, precision):
    rng = np.random.default_rng(6)
    table = rng.standard_normal((1024, 256)).astype(np.float32)  # 1 MiB: the smallest taken
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 256])],
        [numpy_helper.from_array(table, "table")],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), files / "e.onnx"
    )
    art, manifest = _compile(files, "e.onnx", f"embed_{precision}", "--precision", precision)
    rows = manifest["precision"]["layers"]
    assert rows == [
        {"layer": "embedding", "what": "take [1024, 256]", "precision": precision,
         "fp32_bytes": 1 << 20, "bytes": 1 << 19, "reason": None}
    ]  # fmt: skip
    ids = np.array([[0, 5, 1023, 17, 5]], np.int64)
    want = P.round_to(table, precision)[ids]
    np.testing.assert_array_equal(art.run({"ids": ids})["y"], want)
    _art, kept = _compile(
        files, "e.onnx", f"embed32_{precision}", "--precision", precision,
        "--no-precision-embeddings",
    )  # fmt: skip
    assert kept["precision"]["layers"] == []


def test_report_shows_precision_next_to_accuracy_and_speed(files, capsys):
    _compile(files, "chain.onnx", "rep", "--precision", "bf16", *ZNVER3)
    capsys.readouterr()
    model = str(files / "chain.onnx")
    assert main(["report", str(files / "rep"), "--vs", model, "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16: 1/3 layers bf16" in out and "first layer" in out
    assert "note: bf16 computed in fp32 on this target: no AVX512_BF16" in out
