"""`--quantize int8` quantizes the same layers at -O0, -O1, -O2 and -O3.

Compression runs before the first pass that hides layers in fused functions (`fuse`, in O3),
so O3 no longer loses the layers it fused (it used to quantize 17 of MobileNetV2's 53). Each
build is also checked against onnxruntime fp32 (int8 error bound: cosine per output).
"""

from __future__ import annotations

import json

import model_builders as mb
import numpy as np
import onnxruntime as ort
import pytest

from graphopt.cli import main
from graphopt.frontend import import_onnx

LEVELS = (0, 1, 2, 3)
MODELS = {
    "cnn": (mb.cnn, 3),
    "transformer": (mb.transformer_block, 6),
}


def _calibration(model, path, samples: int = 16):
    specs = import_onnx(model).inputs
    feeds = [mb.sample_inputs(specs, seed=i) for i in range(samples)]
    arrays = {s.name: np.concatenate([f[s.name] for f in feeds]) for s in specs}
    np.savez(path, **arrays)
    return feeds[0]


def _lowered(manifest: dict) -> int:
    rows = [r for r in manifest["report"]["passes"] if r["pass"] == "lower-int8"]
    return sum(
        r["stats"].get("lowered_conv2d", 0) + r["stats"].get("lowered_matmul", 0) for r in rows
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_int8_quantizes_the_same_layers_at_every_level(tmp_path, name):
    build, layer_count = MODELS[name]
    model = build()
    path = mb.save(model, tmp_path / f"{name}.onnx")
    feed = _calibration(model, tmp_path / "calib.npz")
    reference = ort.InferenceSession(path).run(None, feed)
    counts, lowered = {}, {}
    for level in LEVELS:
        out = tmp_path / f"O{level}"
        argv = [
            "compile", path, "-o", str(out), "-q", f"-O{level}", "--quantize", "int8",
            "--calibration", str(tmp_path / "calib.npz"), "--calib-method", "minmax",
        ]  # fmt: skip
        assert main(argv) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        counts[level] = manifest["quantization"]["int8_layers"]
        lowered[level] = _lowered(manifest)
        import graphopt

        got = graphopt.load(out).run(feed)
        for ref, value in zip(reference, got.values() if isinstance(got, dict) else got):
            assert _cosine(ref, np.asarray(value)) > 0.98, (level, name)
    assert set(counts.values()) == {layer_count}, counts
    assert len(set(lowered.values())) == 1 and lowered[0] > 0, lowered
