"""A benchmark model (MobileNetV2, real weights) built for a Raspberry Pi 4 runs under qemu and
matches the x86 build and onnxruntime. Slow: two compiles of a real model and an emulated run."""

from __future__ import annotations

import numpy as np
import pytest
from aarch64_tools import needs_aarch64_tools

import graphopt
from graphopt import bundle
from graphopt.instrument import max_relative_error
from graphopt.reference import ort_run, ort_session

pytestmark = [
    pytest.mark.arm,
    pytest.mark.slow,
    needs_aarch64_tools,
]


def model_file(name: str):
    """The exported benchmark model: from the cache, else exported (needs the bench extras)."""
    from bench.models.export import export, model_path

    if not model_path(name).is_file():
        pytest.importorskip("torch", reason="bench extras not installed (make test-slow)")
    return export(name)


def test_mobilenet_v2_on_rpi4_matches_x86(tmp_path):
    pytest.importorskip("skimage", reason="bench extras not installed (make test-slow)")
    from bench.models.inputs import image_batch

    path = model_file("mobilenet_v2")
    arm = graphopt.compile(path, tmp_path / "arm", target="arm", target_options={"board": "rpi4"})
    x86 = graphopt.compile(path, tmp_path / "x86")
    feed = {"input": image_batch(1)[0]}
    out = x86.outputs[0].name
    got = bundle.run_emulated(arm.directory, feed, cpu="cortex-a72")[out]
    want = x86.run(feed)[out]
    ref = ort_run(ort_session(path), feed)[out]
    assert max_relative_error([want], [got]) <= 1e-5
    assert max_relative_error([ref], [got]) <= 1e-4
    assert int(np.argmax(got)) == int(np.argmax(ref))


def test_minilm_on_rpi5_matches_x86(tmp_path):
    """Two int64 inputs (token ids and mask) through the runner's npz reader."""
    pytest.importorskip("transformers", reason="bench extras not installed (make test-slow)")
    from bench.models.inputs import sentence_batch

    path = model_file("minilm")
    arm = graphopt.compile(path, tmp_path / "arm", target="arm", target_options={"board": "rpi5"})
    x86 = graphopt.compile(path, tmp_path / "x86")
    feed = sentence_batch(1)[0]
    out = x86.outputs[0].name
    got = bundle.run_emulated(arm.directory, feed, cpu="cortex-a76")[out]
    want = x86.run(feed)[out]
    ref = ort_run(ort_session(path), feed)[out]
    assert max_relative_error([want], [got]) <= 1e-5
    assert max_relative_error([ref], [got]) <= 1e-4


@pytest.mark.parametrize("precision,kernel", [("bf16", "bfmlal"), ("fp16", "fmlal")])
def test_mobilenet_v2_16bit_on_graviton3_matches_onnxruntime(tmp_path, precision, kernel):
    """`--precision` on a Neoverse-V1: every 16-bit matmul runs the widening multiply-add
    kernel; the emulated output is within 16-bit rounding of onnxruntime fp32."""
    pytest.importorskip("skimage", reason="bench extras not installed (make test-slow)")
    from bench.models.inputs import image_batch
    from graphopt.compress.precision.method import Precision, PrecisionOptions

    path = model_file("mobilenet_v2")
    arm = graphopt.compile(
        path,
        tmp_path / "arm",
        target="arm",
        target_options={"board": "graviton3"},
        compression=[Precision(PrecisionOptions(precision))],
    )
    stats = {r["pass"]: r["stats"] for r in arm.manifest["report"]["passes"]}
    assert (
        stats["materialize-precision"][f"kernel_{kernel}"]
        == stats["materialize-precision"]["kernels"]
    )
    feed = {"input": image_batch(1)[0]}
    out = arm.outputs[0].name
    got = bundle.run_emulated(arm.directory, feed, cpu="max")[out].ravel()
    ref = ort_run(ort_session(path), feed)[out].ravel()
    assert float(got @ ref / np.linalg.norm(got) / np.linalg.norm(ref)) >= 0.999
    assert int(np.argmax(got)) == int(np.argmax(ref))
