"""int8 on ARM: the bundled digits CNN through `quantize` + `lower-int8` for a Raspberry Pi 5
(the ARM stage's materialize-int8 builds sdot kernels) gives the same numbers under qemu as
the x86 build with x86 integer kernels.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from aarch64_tools import needs_aarch64_tools

import graphopt
from graphopt import bundle
from graphopt.pass_infra import registered_passes

pytestmark = [
    pytest.mark.arm,
    pytest.mark.slow,
    needs_aarch64_tools,
    pytest.mark.skipif("lower-int8" not in registered_passes(), reason="no lower-int8 pass"),
]

DIGITS = "graphopt/models/digits_cnn.onnx"
DIGITS_EVAL = "graphopt/models/digits_eval.npz"
SAMPLES = 4


def test_int8_digits_on_rpi5_matches_x86(tmp_path):
    from graphopt.compress.common.data import load_calibration
    from graphopt.compress.int8.calibrate import calibrate_to_file
    from graphopt.frontend import import_onnx
    from graphopt.pipeline import instantiate, parse_pipeline

    imported = import_onnx(DIGITS)
    mod = imported.mod
    for p in instantiate(parse_pipeline("O2")):
        mod = p(mod).module
    ranges = tmp_path / "ranges.json"
    feeds = load_calibration(DIGITS_EVAL, imported.inputs, limit=32)
    calibrate_to_file(ranges, mod, feeds, "minmax")  # on this host: ranges do not depend on it
    quant = f"O2,quantize{{ranges={ranges}}}"

    x86 = graphopt.compile(DIGITS, tmp_path / "x86", pipeline=f"{quant},lower-int8")
    arm = graphopt.compile(
        DIGITS,
        tmp_path / "arm",
        target="arm",
        target_options={"board": "rpi5"},
        pipeline=f"{quant},lower-int8",
    )
    passes = arm.manifest["report"]["passes"]
    stats = next(p for p in passes if p["pass"] == "lower-int8")
    assert stats["stats"]["lowered_conv2d"] == 4 and stats["stats"]["left"] == 0
    built = next(p for p in passes if p["pass"] == "materialize-int8")["stats"]
    assert built["isa_sdot"] == 1
    asm = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(arm.library_path)], capture_output=True, text=True
    ).stdout
    assert "\tsdot\t" in asm

    x = np.load(DIGITS_EVAL)["x"][:SAMPLES]
    name, out = imported.inputs[0].name, x86.outputs[0].name
    for i in range(SAMPLES):
        feed = {name: x[i : i + 1]}
        got = bundle.run_emulated(arm.directory, feed, cpu="cortex-a76")[out]
        np.testing.assert_allclose(got, x86.run(feed)[out], rtol=1e-6, atol=1e-6)


def test_sparse_int8_matmuls_on_rpi5_match_dense(tmp_path):
    """A 16x4 block-pruned MLP in int8: the ARM stage builds block-sparse sdot kernels (4x4
    blocks) that give the dense sdot build's numbers bit for bit under qemu."""
    import model_builders as mb

    from graphopt.compress.common.data import load_calibration
    from graphopt.compress.int8.calibrate import calibrate_to_file
    from graphopt.frontend import import_onnx
    from graphopt.pipeline import instantiate, parse_pipeline

    path = tmp_path / "mlp.onnx"
    mb.save(mb.mlp(), path)
    x = np.random.default_rng(0).standard_normal((64, 4, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x.reshape(-1, 32))
    imported = import_onnx(str(path))
    prune = "prune{pattern=block,sparsity=0.7,block=16,depth=4}"
    mod = imported.mod
    for p in instantiate(parse_pipeline(f"O2,{prune}")):
        mod = p(mod).module
    ranges = tmp_path / "ranges.json"
    feeds = load_calibration(str(tmp_path / "calib.npz"), imported.inputs, limit=32)
    calibrate_to_file(ranges, mod, feeds, "minmax")
    pipeline = f"O2,{prune},quantize{{ranges={ranges}}},lower-int8"
    arts = {
        sparse: graphopt.compile(
            path,
            tmp_path / f"arm_{sparse}",
            target="arm",
            target_options={"board": "rpi5", "sparse": sparse},
            pipeline=pipeline,
        )
        for sparse in ("true", "false")
    }
    built = next(
        p for p in arts["true"].manifest["report"]["passes"] if p["pass"] == "materialize-int8"
    )["stats"]
    assert built["isa_sdot"] == 1 and built["layers_sparse"] == 2
    feed = {"x": x[0]}
    got = {
        s: bundle.run_emulated(a.directory, feed, cpu="cortex-a76")["probs"]
        for s, a in arts.items()
    }
    np.testing.assert_array_equal(got["true"], got["false"])
