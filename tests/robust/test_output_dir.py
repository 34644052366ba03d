"""`compile -o DIR` never loses a user's data: foreign directories, user files, symlinks,
leftovers of interrupted compiles, permissions, paths that cannot hold an artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import model_builders as mb
import pytest

import graphopt
from graphopt._tvm import NATIVE_LOG
from graphopt.artifact import FORMAT, MANIFEST, AtomicDirectory, clean_leftovers, foreign_files
from graphopt.errors import ArtifactError


def fake_artifact(directory: Path, files: dict[str, str] | None = None) -> Path:
    """A directory that carries graphopt's format marker, written by AtomicDirectory."""
    with AtomicDirectory(directory) as tmp:
        (tmp / "model.so").write_text("lib")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "library": "model.so"}))
    return directory


def test_manifest_without_marker_is_not_an_artifact(tmp_path):
    """A foreign `manifest.json` does not make a directory replaceable (it used to)."""
    out = tmp_path / "d"
    out.mkdir()
    (out / MANIFEST).write_text("{}")
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="not a graphopt artifact"):
        graphopt.compile(mb.mlp(), out, opt_level=0)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "notes.txt"]


def test_replacing_an_artifact_keeps_user_files(tmp_path):
    out = tmp_path / "art"
    graphopt.compile(mb.mlp(), out, opt_level=0)
    (out / "notes.txt").write_text("precious")
    (out / "data").mkdir()
    (out / "data" / "x.txt").write_text("mine")
    art = graphopt.compile(mb.mlp(), out, opt_level=1)
    assert (out / "notes.txt").read_text() == "precious"
    assert (out / "data" / "x.txt").read_text() == "mine"
    assert art.manifest["files"] == [MANIFEST, "model.so", NATIVE_LOG]
    assert foreign_files(out) == ["data", "notes.txt"]
    assert mb.leftovers(tmp_path) == []


def test_user_file_with_a_new_artifact_name_refuses(tmp_path):
    out = fake_artifact(tmp_path / "art")
    (out / "io.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="io.txt"):
        fake_artifact(out, {"io.txt": "graphopt's"})
    assert (out / "io.txt").read_text() == "mine"
    assert mb.leftovers(tmp_path) == []


def test_older_manifest_without_file_list(tmp_path):
    """Artifacts from before the `files` list: graphopt's fixed names are its own."""
    out = tmp_path / "art"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"format": FORMAT}))
    for name in ("model.so", "run", "notes.txt"):
        (out / name).write_text("x")
    assert foreign_files(out) == ["notes.txt"]


def test_symlink_output_is_followed_not_replaced(tmp_path):
    target = fake_artifact(tmp_path / "v1")
    link = tmp_path / "current"
    link.symlink_to(target.name)
    graphopt.compile(mb.mlp(), link, opt_level=0)
    assert link.is_symlink() and os.readlink(link) == "v1"
    assert graphopt.load(target).manifest["outputs"][0]["name"] == "probs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]


def test_broken_symlink_output_is_refused(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="broken symlink"):
        graphopt.compile(mb.mlp(), tmp_path / "link", opt_level=0)
    assert not (tmp_path / "nowhere").exists()


def test_leftovers_of_an_interrupted_compile_are_cleaned(tmp_path):
    out = fake_artifact(tmp_path / "art")
    dead = _dead_pid()
    for name in (f".art.tmp-{dead}-ab12", ".art.tmp-k2j3_9x", f".art.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.so").write_text("half")
    running = tmp_path / f".art.tmp-{os.getppid()}-cd34"  # a compile still running: kept
    running.mkdir()
    fake_artifact(out)
    assert mb.leftovers(tmp_path) == [running.name]


def test_missing_artifact_is_restored_from_its_backup(tmp_path):
    """Killed between the two renames of the fallback swap: the backup is the artifact."""
    backup = fake_artifact(tmp_path / "art").rename(tmp_path / f".art.old-{_dead_pid()}-ab")
    clean_leftovers(tmp_path / "art")
    assert (tmp_path / "art" / "model.so").read_text() == "lib"
    assert mb.leftovers(tmp_path) == [] and not backup.exists()


def test_artifact_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = fake_artifact(tmp_path / "art")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("where", ["/proc/graphopt-x", "/sys/graphopt-x", ".", ".."])
def test_impossible_outputs_are_one_error_line(tmp_path, where):
    model = mb.save(mb.mlp(), tmp_path / "m.onnx")
    cwd = fake_artifact(tmp_path / "art")
    before = sorted(p.name for p in cwd.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "graphopt.cli", "compile", model, "-o", where, "-q"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert sorted(p.name for p in cwd.iterdir()) == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
