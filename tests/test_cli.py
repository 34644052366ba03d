"""The `graphopt` command line: compile, run, bench, passes, targets, and every user error.

Most cases call `graphopt.cli.main(argv)` in-process (an escaping exception is reported as the
traceback the real CLI would print); a few run `python -m graphopt.cli` to check the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import model_builders as mb
import numpy as np
import pytest

from graphopt import cli
from graphopt.pass_infra import registered_passes
from graphopt.pipeline import PRESETS
from graphopt.reference import ort_run, ort_session


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run_subprocess(*args: str, cwd: Path | None = None) -> Result:
    """`python -m graphopt.cli ARGS` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "graphopt.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_clean_env(), "GRAPHOPT_NUM_THREADS": "1"},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GRAPHOPT_DEBUG"}


@pytest.fixture
def run_cli(capsys):
    """run_cli(*args) -> Result of graphopt.cli.main(args), in-process."""

    def call(*args: str) -> Result:
        capsys.readouterr()
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - what `python -m graphopt.cli` would print
            captured = capsys.readouterr()
            return Result(1, captured.out, captured.err + traceback.format_exc())
        captured = capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    return call


def assert_user_error(result: Result, *words: str) -> str:
    """Exit code != 0, no traceback, and stderr is one line `error: ...` naming `words`."""
    if "Traceback" in result.err:
        pytest.fail("traceback instead of one error line:\n" + result.err[-2000:], pytrace=False)
    assert result.rc != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    """A failed compile creates neither the output directory nor temporary siblings."""
    assert not out.exists(), f"{out} was created"
    if out.parent.is_dir():
        assert mb.leftovers(out.parent) == []


# ---------------------------------------------------------------------------------------------
# Working commands


@pytest.fixture(scope="module")
def cli_artifact(tmp_path_factory, model_files):
    """`graphopt compile mlp.onnx -o ART -O2`, run as a real process once for this module."""
    out = tmp_path_factory.mktemp("cli") / "mlp-art"
    return out, run_subprocess("compile", model_files["mlp"], "-o", out, "-O", "2")


def test_compile(cli_artifact, model_files):
    out, result = cli_artifact
    assert result.rc == 0, result.err
    assert "Traceback" not in result.err
    assert f"-> {out}/ for x86" in result.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"] == PRESETS["O2"]
    assert manifest["source"]["path"] == str(model_files["mlp"])
    assert (out / "model.so").is_file()


def test_run_writes_outputs_by_name(cli_artifact, model_files, tmp_path):
    out, _ = cli_artifact
    feeds = {"x": np.random.default_rng(7).standard_normal((4, 32)).astype(np.float32)}
    np.savez(tmp_path / "in.npz", **feeds)
    result = run_subprocess(
        "run", out, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz"
    )
    assert result.rc == 0, result.err
    assert "probs [4, 10]" in result.out
    ref = ort_run(ort_session(model_files["mlp"]), feeds)
    with np.load(tmp_path / "out.npz") as got:
        assert got.files == ["probs"]
        np.testing.assert_allclose(got["probs"], ref["probs"], rtol=0, atol=1e-5)


def test_bench(cli_artifact, model_files, tmp_path):
    out, _ = cli_artifact
    result = run_subprocess(
        "bench",
        out,
        "--vs",
        model_files["mlp"],
        "--runs",
        "5",
        "--warmup",
        "1",
        "--json",
        tmp_path / "bench.json",
    )
    assert result.rc == 0, result.err
    assert "ratio" in result.out
    assert "onnxruntime" in result.out and "graphopt" in result.out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["latency"]["graphopt"]["runs"] == 5
    assert data["max_rel_error"] <= 1e-4


def test_passes_lists_fold_constants(run_cli):
    result = run_cli("passes")
    assert result.rc == 0
    summary = registered_passes()["fold-constants"].summary()
    assert summary
    line = next(ln for ln in result.out.splitlines() if "fold-constants " in ln)
    assert summary in line
    assert "O2: fold-constants," in result.out


def test_targets_lists_x86(run_cli):
    result = run_cli("targets")
    assert result.rc == 0
    assert any(ln.startswith("| x86 ") for ln in result.out.splitlines())


@pytest.mark.parametrize("args", [["--help"], ["compile", "--help"], ["run", "--help"]])
def test_help(run_cli, args):
    result = run_cli(*args)
    assert result.rc == 0
    assert "usage: graphopt" in result.out


def test_help_as_process():
    result = run_subprocess("--help")
    assert result.rc == 0 and "compile" in result.out and "bench" in result.out


def test_no_command_is_an_error(run_cli):
    result = run_cli()
    assert result.rc != 0 and "Traceback" not in result.err


# ---------------------------------------------------------------------------------------------
# compile errors


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# Each case: (model to use, or a function of tmp_path writing a bad model), extra args, words
# the error line must contain.
COMPILE_ERRORS = {
    "missing-file": (lambda d: d / "nope.onnx", [], ["not found", "nope.onnx"]),
    "corrupt-file": (
        lambda d: _write(d / "rand.onnx", np.random.default_rng(0).bytes(4096)),
        [],
        ["rand.onnx", "not a valid ONNX model"],
    ),
    "json-file": (
        lambda d: _write(d / "m.json", json.dumps({"graph": [1, 2]}).encode()),
        [],
        ["m.json", "not a valid ONNX model"],
    ),
    "empty-file": (lambda d: _write(d / "empty.onnx", b""), [], ["empty.onnx", "empty"]),
    "directory": (lambda d: d, [], ["directory"]),
    "unsupported-ops": (
        "unsupported_ops",
        [],
        ["Det", "det", "com.example.Foo", "foo1", "foo2"],
    ),
    "dynamic-dims": ("dynamic_batch", [], ["x (N,16)", "--input-shape"]),
    "unknown-input-shape": ("dynamic_batch", ["--input-shape", "bogus=3,16"], ["bogus", "x"]),
    "bad-input-shape": ("dynamic_batch", ["--input-shape", "x=a,b"], ["x=a,b"]),
    "input-shape-rank": ("dynamic_batch", ["--input-shape", "x=3"], ["rank"]),
    "unknown-pass": ("mlp", ["--pipeline", "fold-constants,no-such-pass"], ["no-such-pass"]),
    "unknown-tvm-pass": ("mlp", ["--pipeline", "tvm.NoSuchPass"], ["tvm.NoSuchPass"]),
    "unclosed-brace": ("mlp", ["--pipeline", "fold-constants{"], ["unclosed"]),
    "empty-item": ("mlp", ["--pipeline", "fold-constants,,dce"], ["empty pass name"]),
    "option-without-value": ("mlp", ["--pipeline", "fold-constants{fast}"], ["fast", "key=value"]),
    "unknown-pass-option": (
        "mlp",
        ["--pipeline", "fold-constants{fast=1}"],
        ["fast", "fold-constants"],
    ),
    "unknown-target": ("mlp", ["--target", "riscv-gpu"], ["riscv-gpu", "x86"]),
    "unknown-target-opt": ("mlp", ["--target-opt", "turbo=1"], ["turbo", "mcpu"]),
    "target-opt-not-key-value": ("mlp", ["--target-opt", "mcpu"], ["mcpu", "key=value"]),
}


@pytest.mark.parametrize("case", sorted(COMPILE_ERRORS))
def test_compile_error(run_cli, model_files, tmp_path, case):
    model, extra, words = COMPILE_ERRORS[case]
    model_path = model_files[model] if isinstance(model, str) else model(tmp_path)
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", "-q", model_path, "-o", out, *extra), *words)
    assert_nothing_written(out)


@pytest.mark.parametrize("case", ["corrupt-file", "unsupported-ops", "dynamic-dims"])
def test_compile_error_as_process(model_files, tmp_path, case):
    """The same errors from a real process: exit code 2 and one line on stderr."""
    model, extra, words = COMPILE_ERRORS[case]
    model_path = model_files[model] if isinstance(model, str) else model(tmp_path)
    out = tmp_path / "out"
    result = run_subprocess("compile", "-q", model_path, "-o", out, *extra)
    assert_user_error(result, *words)
    assert result.rc == 2
    assert_nothing_written(out)


def test_output_under_regular_file(run_cli, model_files, tmp_path):
    """-o FILE/out, where FILE is a regular file: a user error, found before compiling."""
    blocker = _write(tmp_path / "afile", b"x")
    assert_user_error(run_cli("compile", "-q", model_files["mlp"], "-o", blocker / "out"), "afile")
    assert blocker.read_bytes() == b"x"
    assert mb.leftovers(tmp_path) == []


def test_output_is_regular_file(run_cli, model_files, tmp_path):
    target = _write(tmp_path / "out", b"keep me")
    assert_user_error(run_cli("compile", "-q", model_files["mlp"], "-o", target), "not a directory")
    assert target.read_bytes() == b"keep me"


def test_output_is_nonempty_non_artifact_dir(run_cli, model_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write(out / "notes.txt", b"mine")
    assert_user_error(run_cli("compile", "-q", model_files["mlp"], "-o", out), "not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert mb.leftovers(tmp_path) == []


def test_output_parents_are_created(run_cli, model_files, tmp_path):
    """Like `mkdir -p`: `-o build/model` works in a fresh checkout."""
    out = tmp_path / "no" / "such" / "out"
    assert run_cli("compile", "-q", model_files["mlp"], "-o", out).rc == 0
    assert (out / "manifest.json").is_file()
    assert mb.leftovers(out.parent) == []


# ---------------------------------------------------------------------------------------------
# run and bench errors


@pytest.fixture(scope="module")
def mlp_dir(compiled):
    return compiled("mlp", 0).directory


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


GOOD_X = np.zeros((4, 32), np.float32)

RUN_ERRORS = {
    "wrong-name": (dict(y=GOOD_X), ["'y'", "'x'"]),
    "extra-name": (dict(x=GOOD_X, extra=GOOD_X), ["'extra'"]),
    "wrong-shape": (dict(x=np.zeros((2, 32), np.float32)), ["'x'", "[2, 32]", "[4, 32]"]),
    "wrong-dtype": (dict(x=GOOD_X.astype(np.float64)), ["'x'", "float64", "float32"]),
}


@pytest.mark.parametrize("case", sorted(RUN_ERRORS))
def test_run_input_error(run_cli, mlp_dir, tmp_path, case):
    arrays, words = RUN_ERRORS[case]
    inputs = _npz(tmp_path / "in.npz", **arrays)
    outputs = tmp_path / "out.npz"
    assert_user_error(run_cli("run", mlp_dir, "--inputs", inputs, "--outputs", outputs), *words)
    assert not outputs.exists()


def test_run_input_error_as_process(mlp_dir, tmp_path):
    inputs = _npz(tmp_path / "in.npz", x=GOOD_X.astype(np.float64))
    result = run_subprocess("run", mlp_dir, "--inputs", inputs, "--outputs", tmp_path / "o.npz")
    assert_user_error(result, "'x'", "float64")


def test_run_missing_inputs_file(run_cli, mlp_dir, tmp_path):
    assert_user_error(
        run_cli("run", mlp_dir, "--inputs", tmp_path / "none.npz", "--outputs", tmp_path / "o.npz"),
        "none.npz",
    )


def test_run_corrupt_inputs_file(run_cli, mlp_dir, tmp_path):
    bad = _write(tmp_path / "bad.npz", b"not a zip")
    assert_user_error(
        run_cli("run", mlp_dir, "--inputs", bad, "--outputs", tmp_path / "o.npz"), "bad.npz"
    )


@pytest.mark.parametrize("artifact", ["missing", "plain-dir"])
def test_run_not_an_artifact(run_cli, tmp_path, artifact):
    directory = tmp_path / "art"
    if artifact == "plain-dir":
        directory.mkdir()
    inputs = _npz(tmp_path / "in.npz", x=GOOD_X)
    assert_user_error(
        run_cli("run", directory, "--inputs", inputs, "--outputs", tmp_path / "o.npz"),
        str(directory),
    )


def test_run_corrupt_library(run_cli, mlp_dir, tmp_path):
    """A damaged model.so is a broken artifact: one error line, not a TVM traceback."""
    broken = Path(shutil.copytree(mlp_dir, tmp_path / "art"))
    _write(broken / "model.so", b"garbage")
    inputs = _npz(tmp_path / "in.npz", x=GOOD_X)
    assert_user_error(
        run_cli("run", broken, "--inputs", inputs, "--outputs", tmp_path / "o.npz"), "model.so"
    )


def test_run_outputs_in_missing_directory(run_cli, mlp_dir, tmp_path):
    inputs = _npz(tmp_path / "in.npz", x=GOOD_X)
    outputs = tmp_path / "no-such-dir" / "o.npz"
    assert_user_error(
        run_cli("run", mlp_dir, "--inputs", inputs, "--outputs", outputs), "no-such-dir"
    )


def test_bench_missing_reference_model(run_cli, mlp_dir, tmp_path):
    result = run_cli(
        "bench", mlp_dir, "--vs", tmp_path / "nope.onnx", "--runs", "2", "--warmup", "0"
    )
    assert_user_error(result, "nope.onnx")


def test_bench_mismatched_reference_model(run_cli, mlp_dir, model_files):
    """--vs a model with other inputs than the artifact: a user error naming the input."""
    result = run_cli("bench", mlp_dir, "--vs", model_files["cnn"], "--runs", "2", "--warmup", "0")
    assert_user_error(result, "x")
