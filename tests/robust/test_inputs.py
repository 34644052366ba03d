"""Malformed model files and run inputs: one `error:` line and exit 2, nothing read that
need not be (FIFOs, devices, zip bombs), no traceback."""

from __future__ import annotations

import io
import os
import random
import zipfile

import model_builders as mb
import numpy as np
import pytest
from robust_helpers import run_process

from graphopt.frontend import load as frontend_load


@pytest.fixture(scope="module")
def mlp_art(compiled):
    return compiled("mlp", 0).directory


def flipped_mlp(tmp_path, seed: int):
    """The mlp model with 1-4 bits flipped (seeds found to hit a given failure)."""
    rng = random.Random(seed)
    data = bytearray(mb.mlp().SerializeToString())
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    path = tmp_path / f"flip{seed}.onnx"
    path.write_bytes(bytes(data))
    return path


def test_fifo_model_is_not_opened(tmp_path):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    run_process("compile", fifo, "-o", tmp_path / "o", timeout=60).assert_user_error(
        "not a regular file"
    )


def test_dev_zero_model_is_not_read(tmp_path):
    run_process("compile", "/dev/zero", "-o", tmp_path / "o", timeout=60).assert_user_error(
        "not a regular file"
    )


def test_directory_model(run_cli, tmp_path):
    run_cli("compile", tmp_path, "-o", tmp_path / "o").assert_user_error("directory")


def test_model_size_limit(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(frontend_load, "MAX_MODEL_BYTES", 100)
    model = mb.save(mb.mlp(), tmp_path / "m.onnx")
    run_cli("compile", model, "-o", tmp_path / "o").assert_user_error("at most 2 GiB")


@pytest.mark.parametrize(
    ("seed", "words"),
    [(106, "not a valid ONNX model"), (475, "clean-up failed")],
    ids=["checker-unicode-error", "onnx-ir-serde-error"],
)
def test_byte_flipped_models(run_cli, tmp_path, seed, words):
    run_cli("compile", flipped_mlp(tmp_path, seed), "-o", tmp_path / "o", "-q").assert_user_error(
        words
    )


# ---------------------------------------------------------------------------------------------
# Run inputs


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]


def huge_header_npy(shape) -> bytes:
    """An .npy whose header claims `shape` (no data follows)."""
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def zip_bomb() -> bytes:
    """1 GiB of zeros that compress to about 1 MB, under the name of the model's input."""
    buf = io.BytesIO()
    header = huge_header_npy((1 << 28,))
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(header)
            block = bytes(1 << 20)
            for _ in range(1024):
                f.write(block)
    return buf.getvalue()


GOOD = np.zeros((4, 32), np.float32)
RUN_INPUTS = {
    "not-a-zip": (lambda: b"not a zip", "not a valid .npz"),
    "truncated": (lambda: npz_bytes(x=GOOD)[:-40], "not a valid .npz"),
    "empty-zip": (lambda: npz_bytes(), "holds no arrays"),
    "empty-file": (lambda: b"", "not a valid .npz"),
    "corrupt-data": (lambda: flip_middle(npz_bytes(x=np.ones((4, 32), np.float32))), "npz"),
    "header-2^40": (lambda: huge_header_npy((1 << 40,)), "expected [4, 32]"),
    "wrong-shape-in-header": (lambda: npz_bytes(x=np.zeros((5, 32), np.float32)), "[5, 32]"),
    "wrong-name": (lambda: npz_bytes(y=GOOD), "unknown input 'y'"),
    "object-array": (
        lambda: npz_bytes(x=np.array([{}], dtype=object)).replace(b"|O", b"|O"),
        "not a valid .npz",
    ),
}


@pytest.mark.parametrize("case", list(RUN_INPUTS))
def test_bad_run_inputs(run_cli, mlp_art, tmp_path, case):
    make, words = RUN_INPUTS[case]
    path = tmp_path / "in.npz"
    path.write_bytes(make())
    result = run_cli("run", mlp_art, "--inputs", path, "--outputs", tmp_path / "o.npz")
    result.assert_user_error(words)
    assert not (tmp_path / "o.npz").exists()


def test_zip_bomb_is_refused_before_decompressing(run_cli, mlp_art, tmp_path):
    import resource

    path = tmp_path / "bomb.npz"
    path.write_bytes(zip_bomb())
    assert path.stat().st_size < 4 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_cli("run", mlp_art, "--inputs", path, "--outputs", tmp_path / "o.npz")
    result.assert_user_error("[268435456]", "expected [4, 32]")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_single_npy_feeds_a_single_input_model(run_cli, mlp_art, tmp_path):
    np.save(tmp_path / "in.npy", GOOD)
    result = run_cli("run", mlp_art, "--inputs", tmp_path / "in.npy", "--outputs", tmp_path / "o")
    assert result.rc == 0, result.err
