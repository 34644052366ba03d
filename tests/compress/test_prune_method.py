"""`compile --prune`: the pruned artifact computes what numpy computes with the pruned weights,
each pattern reaches the graph exactly, block zeros take the sparse kernels, a compile
without --prune is untouched, and pruning composes with int8."""

from __future__ import annotations

import json

import model_builders as mb
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.compress.prune.masks import magnitude
from graphopt.compress.prune.spec import parse_spec

MLP_X = (4, 32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    mb.save(mb.mlp(), root / "mlp.onnx")
    mb.save(mb.mobilenet_block(), root / "block.onnx")
    rng = np.random.default_rng(1)
    np.savez(root / "calib.npz", x=rng.standard_normal((256, 32)).astype(np.float32))
    np.savez(root / "few.npz", x=rng.standard_normal((8, 32)).astype(np.float32))
    np.savez(root / "calib_block.npz", x=rng.standard_normal((40, 8, 12, 12)).astype(np.float32))
    return root


def _compile(files, model: str, name: str, *flags: str):
    out = files / name
    assert main(["compile", str(files / model), "-o", str(out), "-q", *flags]) == 0
    return graphopt.load(out), json.loads((out / "manifest.json").read_text())


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from graphopt.reference import ort_session

    session = ort_session(model.SerializeToString())
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _magnitude_onnx(path, spec_text: str, block: int = 16) -> onnx.ModelProto:
    """The numpy reference: every MatMul weight [K, N] pruned by magnitude."""
    model = onnx.load(str(path))
    spec = parse_spec(spec_text, block)
    matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    for t in model.graph.initializer:
        if t.name in matmul_weights:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(magnitude(w, spec), t.name))
    return model


@pytest.mark.parametrize(
    "spec, flags",
    [("unstructured=0.5", []), ("2:4", []), ("block=0.5", ["--prune-block", "8"])],
)
def test_magnitude_matches_numpy_reference(files, spec, flags):
    art, manifest = _compile(files, "mlp.onnx", f"mag-{spec}", "--prune", spec, *flags)
    x = np.random.default_rng(0).standard_normal(MLP_X).astype(np.float32)
    got = art.run({"x": x})["probs"]
    block = int(flags[1]) if flags else 16
    ref = _ort(_magnitude_onnx(files / "mlp.onnx", spec, block), x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    dense = _ort(onnx.load(str(files / "mlp.onnx")), x)
    assert np.abs(got - dense).max() > 1e-3  # pruning did change the model
    p = manifest["pruning"]
    assert p["pruned_layers"] == 3 and p["settings"]["method"] == "magnitude"
    stats = [e for e in manifest["report"]["passes"] if e["pass"] == "prune"][0]["stats"]
    assert stats["layers_pruned"] == 3 and stats["zeros"] == p["size"]["zeros"]


def test_unstructured_level_is_exact_per_layer(files):
    _, manifest = _compile(files, "mlp.onnx", "exact", "--prune", "unstructured=0.3")
    for row in manifest["pruning"]["layers"]:
        assert row["zeros"] == round(0.3 * row["weights"])


def test_sparsegpt_beats_magnitude_on_held_out_inputs(files):
    calib = ["--calibration", str(files / "calib.npz")]
    _, mag = _compile(
        files,
        "mlp.onnx",
        "m",
        "--prune",
        "unstructured=0.5",
        *calib,
        "--prune-method",
        "magnitude",
        "--no-prune-bias-correction",
    )
    sgpt, manifest = _compile(files, "mlp.onnx", "s", "--prune", "unstructured=0.5", *calib)
    rows = manifest["pruning"]["layers"]
    assert all(r["error_sparsegpt"] < r["error_magnitude"] for r in rows)
    assert all(r["zeros"] == round(0.5 * r["weights"]) for r in rows)
    x = np.random.default_rng(7).standard_normal(MLP_X).astype(np.float32)
    dense = _ort(onnx.load(str(files / "mlp.onnx")), x)
    mag_art = graphopt.load(files / "m")
    err_mag = np.abs(mag_art.run({"x": x})["probs"] - dense).mean()
    err_obs = np.abs(sgpt.run({"x": x})["probs"] - dense).mean()
    assert err_obs < err_mag


def test_block_zeros_take_sparse_kernels(files):
    _, manifest = _compile(files, "mlp.onnx", "blk", "--prune", "block=0.7", "--prune-block", "8")
    stats = [e for e in manifest["report"]["passes"] if e["pass"] == "sparsify"][0]["stats"]
    assert stats["layers_sparse"] >= 1
    assert stats["weight_bytes_sparse"] < stats["weight_bytes_dense"]


def test_block_16x4_then_int8_takes_sparse_int8_kernels(files):
    """With --quantize int8 the default block is 16x4: the int8 layers left with at most
    `MAX_DENSITY` of their blocks run the block-sparse int8 kernel, computing exactly what the
    dense int8 kernels compute on the same zeros (`sparse=false`), from fewer stored bytes."""
    flags = ["--prune", "block=0.7", "--prune-method", "magnitude", "--quantize", "int8"]
    flags += ["--calibration", str(files / "calib.npz")]
    sparse, manifest = _compile(files, "mlp.onnx", "blk-int8", *flags)
    dense, dense_manifest = _compile(
        files, "mlp.onnx", "blk-int8-dense", *flags, "--target-opt", "sparse=false"
    )
    assert manifest["pruning"]["settings"]["spec"] == "block16x4=0.7"

    def stats(m):
        return [e for e in m["report"]["passes"] if e["pass"] == "materialize-int8"][0]["stats"]

    got = stats(manifest)
    assert got["layers_sparse"] == 2  # the two int8 layers with at least 1024 weights
    assert got["sparse_bytes_stored"] < 0.5 * got["sparse_bytes_dense"]
    assert stats(dense_manifest)["layers_sparse"] == 0
    x = np.random.default_rng(0).standard_normal(MLP_X).astype(np.float32)
    np.testing.assert_array_equal(sparse.run({"x": x})["probs"], dense.run({"x": x})["probs"])


def _magnitude_convs(path, spec_text: str) -> onnx.ModelProto:
    """The numpy reference for 1x1 convs: W [O, I, 1, 1] pruned as [K = I, N = O]."""
    model = onnx.load(str(path))
    spec = parse_spec(spec_text)
    pointwise = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if t.name in pointwise and w.shape[1:] != (1, 3, 3):
            kn = magnitude(w.reshape(w.shape[:2]).T, spec)
            t.CopyFrom(numpy_helper.from_array(kn.T.reshape(w.shape).copy(), t.name))
    return model


def test_conv_1x1_layers(files):
    """The 1x1 convs of a MobileNet block are pruned (not the depthwise conv): by magnitude
    equal to ORT on the numpy-pruned weights; by SparseGPT from NCHW activations, exact 2:4."""
    art, manifest = _compile(files, "block.onnx", "conv-mag", "--prune", "unstructured=0.5")
    rows = {r["layer"]: r for r in manifest["pruning"]["layers"]}
    assert set(rows) == {"conv2d_1", "conv2d_2"}  # conv2d_0 is the depthwise conv
    x = np.random.default_rng(3).standard_normal((1, 8, 12, 12)).astype(np.float32)
    ref = _ort(_magnitude_convs(files / "block.onnx", "unstructured=0.5"), x)
    np.testing.assert_allclose(art.run({"x": x})["y"], ref, rtol=1e-5, atol=1e-5)
    flags = ["--prune", "2:4", "--calibration", str(files / "calib_block.npz")]
    _, manifest = _compile(files, "block.onnx", "conv", *flags)
    rows = manifest["pruning"]["layers"]
    assert [r["sparsity"] for r in rows] == [0.5, 0.5]
    assert all(r["error_sparsegpt"] <= r["error_magnitude"] for r in rows)


def test_no_prune_is_untouched(files):
    art, manifest = _compile(files, "mlp.onnx", "plain")
    assert "pruning" not in manifest
    assert all(e["pass"] != "prune" for e in manifest["report"]["passes"])
    x = np.random.default_rng(0).standard_normal(MLP_X).astype(np.float32)
    ref = _ort(onnx.load(str(files / "mlp.onnx")), x)
    np.testing.assert_allclose(art.run({"x": x})["probs"], ref, rtol=1e-5, atol=1e-6)


def test_prune_then_int8(files):
    flags = ["--prune", "2:4", "--quantize", "int8", "--calibration", str(files / "calib.npz")]
    art, manifest = _compile(files, "mlp.onnx", "int8", *flags)
    assert manifest["pruning"]["pruned_layers"] == 3
    assert manifest["quantization"]["int8_layers"] >= 1
    order = [e["pass"] for e in manifest["report"]["passes"]]
    assert order.index("prune") < order.index("quantize")
    x = np.random.default_rng(0).standard_normal(MLP_X).astype(np.float32)
    assert np.isfinite(art.run({"x": x})["probs"]).all()


def test_few_samples_warn(files, capsys):
    out = files / "few"
    flags = ["--prune", "unstructured=0.3", "--calibration", str(files / "few.npz")]
    assert main(["compile", str(files / "mlp.onnx"), "-o", str(out), *flags]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning: prune" in ln]
    assert len(warnings) == 1 and "8 calibration samples" in warnings[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prune", "unstructured=1.5"], "between 0 and 1"),
        (["--prune", "3:2"], "0 < N < M"),
        (["--prune", "dense"], "not a pruning spec"),
        (["--prune", "2:4", "--prune-method", "sparsegpt"], "needs --calibration"),
        (["--prune", "block=0.5", "--prune-block", "0"], "--prune-block"),
        (["--prune", "block=0.5", "--prune-block", "16x3"], "depth must be one of"),
    ],
)
def test_user_errors(files, capsys, flags, message):
    assert main(["compile", str(files / "mlp.onnx"), "-o", str(files / "e"), "-q", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_report_shows_pruning(files, capsys):
    _compile(files, "mlp.onnx", "rep", "--prune", "block=0.7", "--prune-block", "8")
    capsys.readouterr()
    args = ["report", str(files / "rep"), "--vs", str(files / "mlp.onnx"), "--runs", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pruning (block8x1=0.7, magnitude): 3/3 layers pruned" in out
    assert "matmul_1" in out and "stored: " in out and "block-sparse" in out


@pytest.mark.parametrize(
    "pipeline, expect",
    [
        ("O2,prune{pattern=block,sparsity=0.8,block=16}", "stored: 2 layer(s) block-sparse"),
        ("O2,prune{pattern=unstructured,sparsity=0.8}", "note: 2 layer(s) at least half zeros"),
    ],
    ids=["blocks", "scattered"],
)
def test_compile_says_what_became_of_zeros(files, capsys, pipeline, expect):
    """A model that comes with zeros (here written by a pipeline, not --prune): compile says
    which layers went block-sparse, and why zeros that are not in blocks gained nothing."""
    out = files / f"zeros-{expect[:5]}"
    assert main(["compile", str(files / "mlp.onnx"), "-o", str(out), "--pipeline", pipeline]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith(expect) for ln in lines), lines
    plain = files / "zeros-none"
    assert main(["compile", str(files / "mlp.onnx"), "-o", str(plain)]) == 0
    out_lines = capsys.readouterr().out.splitlines()
    assert not any(ln.startswith(("stored:", "note:")) for ln in out_lines)


def test_int8_layers_with_scattered_zeros_are_named(files, capsys):
    flags = ["--prune", "unstructured=0.8", "--prune-method", "magnitude", "--quantize", "int8"]
    flags += ["--calibration", str(files / "calib.npz")]
    out = files / "int8-scattered"
    assert main(["compile", str(files / "mlp.onnx"), "-o", str(out), *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        "stored: 0 int8 layer(s) block-sparse, 0 B -> 0 B; 2 int8 layer(s) with zeros stay dense"
        in lines
    )
    assert any(ln.startswith("note: 2 layer(s) at least half zeros stay dense") for ln in lines)
