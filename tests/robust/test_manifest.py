"""The manifest is verified at load: schema, library inside the artifact, library sha256."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import graphopt
from graphopt.errors import ArtifactError


@pytest.fixture(scope="module")
def mlp_art(compiled):
    return compiled("mlp", 0)


@pytest.fixture
def art(mlp_art, tmp_path):
    return shutil.copytree(mlp_art.directory, tmp_path / "art")


def edit(directory, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_manifest_records_library_sha256(mlp_art):
    import hashlib

    data = (mlp_art.directory / "model.so").read_bytes()
    assert mlp_art.manifest["library_sha256"] == hashlib.sha256(data).hexdigest()


EDITS = {
    "library-outside": (lambda m: m.update(library="../elsewhere/model.so"), "outside"),
    "library-absolute": (lambda m: m.update(library="/usr/lib/model.so"), "outside"),
    "library-not-a-string": (lambda m: m.update(library=3), "'library'"),
    "no-sha": (lambda m: m.pop("library_sha256"), "library_sha256"),
    "bad-sha": (lambda m: m.update(library_sha256="00" * 32), "sha256"),
    "no-inputs": (lambda m: m.pop("inputs"), "'inputs'"),
    "outputs-empty": (lambda m: m.update(outputs=[]), "'outputs' is empty"),
    "shape-mistyped": (lambda m: m["inputs"][0].update(shape="4,32"), r"inputs\[0\]"),
    "shape-negative": (lambda m: m["inputs"][0].update(shape=[-1, 32]), r"inputs\[0\]"),
    "dtype-unknown": (lambda m: m["outputs"][0].update(dtype="float99"), "float99"),
    "spec-not-object": (lambda m: m.update(outputs=["probs"]), r"outputs\[0\]"),
    "no-target": (lambda m: m.pop("target"), "'target'"),
    "not-an-object": (lambda m: m.clear(), "format"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_edited_manifest_is_refused(art, case):
    change, words = EDITS[case]
    edit(art, change)
    with pytest.raises(ArtifactError, match=words):
        graphopt.load(art)


def test_library_symlink_out_of_the_artifact(art, tmp_path):
    shutil.move(art / "model.so", tmp_path / "elsewhere.so")
    (art / "model.so").symlink_to(tmp_path / "elsewhere.so")
    with pytest.raises(ArtifactError, match="outside"):
        graphopt.load(art)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "graphopt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_truncated_library_is_an_error_not_sigbus(art, tmp_path):
    lib = art / "model.so"
    lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])
    np.savez(tmp_path / "in.npz", x=np.zeros((4, 32), np.float32))
    proc = run_cli("run", art, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "o.npz")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "sha256" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_empty_outputs_writes_nothing(art, tmp_path):
    edit(art, lambda m: m.update(outputs=[]))
    np.savez(tmp_path / "in.npz", x=np.zeros((4, 32), np.float32))
    proc = run_cli("run", art, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "o.npz")
    assert proc.returncode == 2 and "'outputs' is empty" in proc.stderr
    assert not (tmp_path / "o.npz").exists()
