"""The device check's model handling, which runs here before the trip (bench/gpu_check_prepare.py)
and on the GPU host (bench/onnx_skeleton.py, bench/gpu_check.py): no GPU or nvcc needed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_check  # noqa: E402
import gpu_check_prepare as prep  # noqa: E402
import onnx_skeleton  # noqa: E402


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _classifier(batch_dim) -> onnx.ModelProto:
    """conv -> global pool -> Reshape [1, -1] -> Gemm: batch 1 baked into the Reshape."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8, 10)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rebatch_widens_the_batch_and_keeps_each_sample():
    model = _classifier(1)
    wide = prep.rebatch(model, 4)
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    (got,) = _run(wide, {"x": x})
    assert got.shape == (4, 10)
    for i in range(4):
        np.testing.assert_allclose(got[i : i + 1], _run(model, {"x": x[i : i + 1]})[0], 1e-5)


def test_skeleton_drops_large_weights_and_restores_their_shapes():
    model = _classifier(1)
    big = np.random.default_rng(2).normal(0, 0.1, (256, 3, 3, 3)).astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(big, "w"))  # not run here
    bare = onnx_skeleton.strip(model)
    names = {t.name for t in bare.graph.initializer}
    assert "w" not in names and {"shape", "fc"} <= names  # big float out, small and ints kept
    assert len(bare.SerializeToString()) < len(model.SerializeToString()) // 4
    restored = {t.name: t for t in onnx_skeleton.restore(bare).graph.initializer}
    assert list(restored["w"].dims) == [256, 3, 3, 3]
    assert restored["w"].data_type == TensorProto.FLOAT


def test_vocabulary_cut_keeps_the_graph():
    table = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["y"])],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])],
        [numpy_helper.from_array(table, "emb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cut = prep.cut_vocabulary(model, 8)
    assert list(cut.graph.initializer[0].dims) == [8, 4]
    ids = np.array([[0, 7, 3]], np.int64)
    np.testing.assert_array_equal(_run(cut, {"ids": ids})[0], table[ids])


def test_inputs_are_seeded_and_in_range():
    spec = [("input_ids", "<i8", (1, 16)), ("attention_mask", "<i8", (1, 16)), ("x", "<f4", (2,))]
    a, b = gpu_check.make_inputs(spec, 0, 100), gpu_check.make_inputs(spec, 0, 100)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["input_ids"].max() < 100 and a["input_ids"].min() >= 0
    assert (a["attention_mask"] == 1).all()


def test_int8_cases_need_fp32_cosine_and_the_cpu_int8_numbers(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(8, 1000)).astype(np.float32)
    close = ref + rng.normal(0, 0.1, ref.shape).astype(np.float32)  # cosine about 0.995
    assert gpu_check.compare(close, ref, "int8")["ok"]
    assert not gpu_check.compare(close, ref, "fp16")["ok"]  # int8's bar is lower, not fp16's
    flipped = ref.copy()
    flipped[:2, ref[:2].argmin(-1)] = 100.0  # two of eight samples change class
    assert gpu_check.top1(flipped, ref) == 0.75
    np.savez(tmp_path / "cpu.npz", logits=ref)
    assert gpu_check.same_as_cpu_int8({"logits": ref * (1 + 1e-6)}, tmp_path / "cpu.npz")["logits"][
        "ok"
    ]
    assert not gpu_check.same_as_cpu_int8({"logits": flipped}, tmp_path / "cpu.npz")["logits"]["ok"]


def test_int8_calibration_is_other_draws_of_the_same_inputs(tmp_path):
    model = _classifier(1)
    quant = prep._quantization(model, "mobilenet_v2", tmp_path)
    assert quant.mode == "static" and not quant.sensitivity
    with np.load(quant.calibration) as calib:
        x = calib["x"]
    assert x.shape == (len(prep.CALIB_SEEDS), 3, 16, 16)
    checked = gpu_check.make_inputs([("x", "<f4", (1, 3, 16, 16))], 0)["x"]
    assert not any(np.array_equal(sample, checked[0]) for sample in x)
    assert prep._quantization(model, "minilm", tmp_path).granularity == "row"


def test_groups_name_known_models_and_precisions():
    for cases in prep.GROUPS.values():
        for name, batch, precision in cases:
            assert name in (*prep.CNNS, *prep.BLOCKS, "minilm")
            assert precision in ("fp32", "fp16", "bf16", "int8") and batch in (1, 8, 32)


@pytest.mark.slow  # two CUDA compiles
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
def test_prepare_writes_a_directory_the_gpu_host_reads(tmp_path, monkeypatch):
    monkeypatch.setitem(
        prep.GROUPS, "test", [("transformer_block", 1, "fp32"), ("mobilenet_block", 1, "fp16")]
    )
    listed = prep.prepare(tmp_path, "sm_90", "test")
    assert [e["case"] for e in listed] == ["transformer_block-b1-fp32", "mobilenet_block-b1-fp16"]
    assert (tmp_path / "run").is_file() and (tmp_path / "lib" / "libtvm_runtime.so").is_file()
    for entry in listed:
        inputs, outputs = gpu_check.io_spec(tmp_path / entry["case"])
        with np.load(tmp_path / entry["reference"]) as refs:
            assert set(outputs) <= set(refs.files)
        graph = gpu_check.load_graph(tmp_path / entry["onnx"])  # weights back, real shapes
        feeds = gpu_check.make_inputs(inputs, 0, entry["vocab"])
        shapes = [refs_shape(tmp_path, entry, o) for o in outputs]
        assert [o.shape for o in _run(graph, feeds)] == shapes
    assert prep._bundle_size(tmp_path) < prep.MAX_CARRY_MIB * 2**20


def refs_shape(root: Path, entry: dict, name: str) -> tuple:
    with np.load(root / entry["reference"]) as refs:
        return refs[name].shape
