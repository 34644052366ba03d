"""TVM's native log lines (the C++ runtime's `Scope Saving:` / `Scope Loaded:` warnings) go to
the artifact's tvm.log, not the terminal; graphopt's own lines and `error:` lines stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from graphopt._tvm import NATIVE_LOG, native_log

MODELS = Path(__file__).resolve().parents[1] / "graphopt" / "models"


def test_native_log_redirects_fd2_and_restores_it(tmp_path, capfd):
    log = tmp_path / "tvm.log"
    with native_log(log):
        os.write(2, b"native line\n")
    os.write(2, b"after\n")
    assert log.read_text() == "native line\n"
    assert capfd.readouterr().err == "after\n"
    with native_log(tmp_path / "missing-dir" / "x.log"):  # cannot open: dropped, no error
        os.write(2, b"dropped\n")
    assert "dropped" not in capfd.readouterr().err


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRAPHOPT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "graphopt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "GRAPHOPT_NUM_THREADS": "1"},
    )


def test_int8_artifact_compiles_and_runs_without_native_log_lines(tmp_path):
    art = tmp_path / "d8"
    compiled = _cli(
        "compile", MODELS / "digits_cnn.onnx", "-o", art, "--quantize", "int8",
        "--calibration", MODELS / "digits_eval.npz", "--calib-samples", "32",
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    assert "Scope Saving" not in compiled.stderr + compiled.stdout
    assert "compiled" in compiled.stdout + compiled.stderr  # graphopt's own line stays
    assert "Scope Saving" in (art / NATIVE_LOG).read_text()

    x = np.load(MODELS / "digits_eval.npz")["x"][:1]
    np.savez(tmp_path / "in.npz", input=x)
    ran = _cli("run", art, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz")
    assert ran.returncode == 0, ran.stderr
    assert "Scope Loaded" not in ran.stderr + ran.stdout
    assert "wrote" in ran.stdout
    assert "Scope Loaded" in (art / NATIVE_LOG).read_text()

    bad = _cli("run", art, "--inputs", tmp_path / "nope.npz", "--outputs", tmp_path / "o.npz")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
