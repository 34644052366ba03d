"""`compile --quantize int8 --target arm`: calibration builds and runs on this host (x86),
lower-int8 emits the portable int8 ops, the ARM target's schedule stage builds them with sdot
(materialize-int8), and the bundle's output under qemu equals the x86 int8 build's (same
ranges: they do not depend on the target)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from aarch64_tools import needs_aarch64_tools

from graphopt import bundle
from graphopt.cli import main

pytestmark = [
    pytest.mark.arm,
    pytest.mark.slow,
    needs_aarch64_tools,
]

DIGITS = "graphopt/models/digits_cnn.onnx"
DIGITS_EVAL = "graphopt/models/digits_eval.npz"


def test_compile_quantize_int8_for_arm_matches_x86(tmp_path):
    from graphopt.artifact import Artifact

    common = ["compile", DIGITS, "--quantize", "int8", "--calibration", DIGITS_EVAL]
    common += ["--calib-method", "minmax"]
    # x86 keeps every layer int8 (no speed check) so that both builds compute the same graph.
    assert main([*common, "--no-speed-check", "-o", str(tmp_path / "x86")]) == 0
    arm_args = ["--target", "arm", "--target-opt", "board=rpi5", "-o", str(tmp_path / "arm")]
    arm_args.append("--speed-check")  # asked for, but the board's kernels cannot run here
    assert main([*common, *arm_args]) == 0
    x86, arm = Artifact(tmp_path / "x86"), Artifact(tmp_path / "arm")
    passes = arm.manifest["report"]["passes"]
    lowered = next(p for p in passes if p["pass"] == "lower-int8")["stats"]
    assert lowered["lowered_conv2d"] == 4 and lowered["left"] == 0
    # Built for the board's instruction by the ARM target's stage.
    built = next(p for p in passes if p["pass"] == "materialize-int8")["stats"]
    assert built["isa_sdot"] == 1 and built["kernels"] >= 4
    asm = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(arm.library_path)], capture_output=True, text=True
    ).stdout
    assert "\tsdot\t" in asm
    assert x86.manifest["quantization"]["ranges"] == arm.manifest["quantization"]["ranges"]
    # The board's kernels cannot be timed here: no layer is kept fp32 for speed.
    assert "cross target arm" in arm.manifest["quantization"]["speed_check"]["skipped"]

    x = np.load(DIGITS_EVAL)["x"][:3]
    name, out = x86.inputs[0].name, x86.outputs[0].name
    for i in range(len(x)):
        feed = {name: x[i : i + 1]}
        got = bundle.run_emulated(arm.directory, feed, cpu="cortex-a76")[out]
        np.testing.assert_allclose(got, x86.run(feed)[out], rtol=1e-6, atol=1e-6)
