"""Artifacts: runtime-only loading, input checking, atomic writes, broken directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import model_builders as mb
import numpy as np
import pytest

import graphopt
from graphopt.errors import ArtifactError, InputError, UnsupportedOperatorError
from graphopt.pipeline import PRESETS

# Modules of the compiler stack; loading and running an artifact must need none of them.
COMPILER_MODULES = [
    "onnx",
    "onnxruntime",
    "onnxscript",
    "graphopt.frontend",
    "graphopt.compiler",
    "graphopt.passes",
    "graphopt.pipeline",
]

RUNTIME_ONLY_SCRIPT = textwrap.dedent(
    """
    import sys
    for name in sys.argv[4:]:
        sys.modules[name] = None  # any import of it now raises ImportError
    import numpy as np
    import graphopt

    art = graphopt.load(sys.argv[1])
    with np.load(sys.argv[2]) as data:
        outputs = art.run({k: data[k] for k in data.files})
    np.savez(sys.argv[3], **outputs)
    """
)


@pytest.fixture(scope="module")
def transformer(compiled):
    """A compiled two-input model shared by the read-only tests here."""
    return compiled("transformer_block", 0)


def snapshot(directory) -> dict[str, bytes]:
    """File name -> bytes of every file in an artifact directory."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_load_needs_only_the_runtime(transformer, tmp_path):
    feeds = mb.sample_inputs(transformer.inputs)
    np.savez(tmp_path / "in.npz", **feeds)
    argv = [str(transformer.directory), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")]
    proc = subprocess.run(
        [sys.executable, "-c", RUNTIME_ONLY_SCRIPT, *argv, *COMPILER_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    expected = transformer.run(feeds)
    with np.load(tmp_path / "out.npz") as got:
        assert sorted(got.files) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)


BLOCK_CHECK_SCRIPT = textwrap.dedent(
    """
    import importlib, sys
    for name in sys.argv[1:]:
        sys.modules[name] = None
    for name in sys.argv[1:]:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        raise SystemExit(f"{name} was imported despite the block")
    """
)


def test_blocking_really_blocks():
    """The blocking used above makes every compiler module fail to import (guards that test)."""
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_CHECK_SCRIPT, *COMPILER_MODULES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def good_inputs(art) -> dict[str, np.ndarray]:
    return mb.sample_inputs(art.inputs)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda f: {**f, "bogus": f["x"]}, ["'bogus'"]),
        (lambda f: {"bogus": f["x"], "mask": f["mask"]}, ["'bogus'", "'x'"]),
        (lambda f: {"x": f["x"]}, ["'mask'"]),
        (lambda f: {}, ["'x'", "'mask'"]),
        (lambda f: {**f, "x": f["x"][:, :4]}, ["'x'", "shape"]),
        (lambda f: {**f, "x": f["x"][None]}, ["'x'", "shape"]),
        (lambda f: {**f, "mask": f["mask"].astype(np.float64)}, ["'mask'", "float64"]),
        (lambda f: {**f, "x": f["x"].astype(np.int32)}, ["'x'", "int32"]),
    ],
    ids=[
        "extra-name",
        "wrong-name",
        "missing-one",
        "missing-all",
        "wrong-shape",
        "wrong-rank",
        "wrong-dtype",
        "int-dtype",
    ],
)
def test_run_rejects_bad_inputs(transformer, change, named):
    with pytest.raises(InputError) as info:
        transformer.run(change(good_inputs(transformer)))
    for word in named:
        assert word in str(info.value)


def test_run_accepts_noncontiguous_inputs(transformer):
    feeds = good_inputs(transformer)
    strided = {**feeds, "x": np.asfortranarray(feeds["x"])}
    np.testing.assert_array_equal(transformer.run(strided)["y"], transformer.run(feeds)["y"])


def test_recompile_replaces_artifact_atomically(graphopt_compile, tmp_path):
    out = tmp_path / "art"
    graphopt_compile(mb.mlp(), out, opt_level=0)
    assert json.loads((out / "manifest.json").read_text())["pipeline"] == ""
    art = graphopt_compile(mb.mlp(), out, opt_level=1)
    assert art.manifest["pipeline"] == PRESETS["O1"]
    assert graphopt.load(out).manifest["pipeline"] == PRESETS["O1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so", "tvm.log"]


def test_failed_compile_keeps_old_artifact(graphopt_compile, tmp_path):
    out = tmp_path / "art"
    graphopt_compile(mb.mlp(), out, opt_level=0)
    before = snapshot(out)
    with pytest.raises(UnsupportedOperatorError):
        graphopt_compile(mb.unsupported_ops(), out, opt_level=0)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    art = graphopt.load(out)
    assert art.run(good_inputs(art))["probs"].shape == (4, 10)


def test_failure_while_writing_keeps_old_artifact(graphopt_compile, tmp_path, monkeypatch):
    """A failure after the temporary directory exists (half-written library) changes nothing."""
    from graphopt import target_infra

    out = tmp_path / "art"
    graphopt_compile(mb.mlp(), out, opt_level=0)
    before = snapshot(out)

    def broken_export(self, executable, path):
        path.write_bytes(b"half a library")
        raise RuntimeError("disk full")

    monkeypatch.setattr(target_infra.Target, "export", broken_export)
    with pytest.raises(RuntimeError, match="disk full"):
        graphopt_compile(mb.mlp(), out, opt_level=1)
    assert snapshot(out) == before
    assert mb.leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_failed_first_compile_creates_nothing(graphopt_compile, tmp_path):
    with pytest.raises(UnsupportedOperatorError):
        graphopt_compile(mb.unsupported_ops(), tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def artifact_copy(transformer, tmp_path):
    """A private copy of a good artifact, to break."""
    return shutil.copytree(transformer.directory, tmp_path / "copy")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
        (lambda d: (d / "model.so").unlink(), "missing"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "cannot read"),
        (lambda d: (d / "manifest.json").write_text('{"format": "other/9"}'), "format"),
        (lambda d: shutil.rmtree(d), "not found"),
    ],
    ids=["no-manifest", "no-library", "corrupt-manifest", "unknown-format", "no-directory"],
)
def test_load_broken_artifact(artifact_copy, breakage, message):
    breakage(artifact_copy)
    with pytest.raises(ArtifactError, match=message):
        graphopt.load(artifact_copy)


def test_load_plain_empty_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a graphopt artifact"):
        graphopt.load(tmp_path)


def test_corrupt_library_raises_artifact_error(artifact_copy):
    """A library that is not a shared object is a broken artifact, not an internal error."""
    (artifact_copy / "model.so").write_bytes(b"\x7fELF but not really")
    with pytest.raises(ArtifactError):
        art = graphopt.load(artifact_copy)
        art.run(good_inputs(art))


def test_scalar_inputs_keep_zero_dims(tmp_path):
    """0-d inputs (Clip's min/max here) must reach the model as 0-d, not 1-element arrays."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")],
        "clip",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("hi", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    art = graphopt.compile(model, tmp_path / "clip", opt_level=0)
    x = np.linspace(-2, 2, 6, dtype="float32").reshape(2, 3)
    out = art.run({"x": x, "lo": np.array(-1, "float32"), "hi": np.array(0.5, "float32")})
    np.testing.assert_array_equal(out["y"], np.clip(x, -1, 0.5))
