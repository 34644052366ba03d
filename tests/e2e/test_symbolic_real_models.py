"""Real models with symbolic input dims: MiniLM (sequence length) at -O3 and MobileNetV2
(batch) at -O2, one build each, run at several sizes against onnxruntime.

Slow: exports the dynamic variants once (cached) and compiles them. Needs the bench extras
(`make test-slow` installs them).
"""

from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt.reference import ort_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export():
    pytest.importorskip("torch", reason="bench extras not installed (make test-slow)")
    from bench.models.export import export

    return export


@pytest.mark.parametrize(
    ("name", "shape", "level", "sizes", "kind"),
    [
        ("minilm_dynamic", ("input_ids", (1, "1..256")), 3, (7, 64, 256), "text"),
        ("mobilenet_v2_dynamic", ("input", ("1..4", 3, 224, 224)), 2, (1, 3), "image"),
    ],
)
def test_one_build_matches_onnxruntime_at_every_size(
    export, tmp_path, name, shape, level, sizes, kind
):
    from bench.shapes_worker import feeds

    path = export(name)
    art = graphopt.compile(path, tmp_path / name, opt_level=level, input_shapes=dict([shape]))
    session = ort_session(path)
    for n in sizes:
        feed = feeds(kind, n)
        want = session.run(None, feed)[0]
        got = next(iter(art.run(feed).values()))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
