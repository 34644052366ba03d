"""The real-model corpus (bench/models/corpus.py): every model compiles at O0..O3 for x86 and
matches onnxruntime fp32 on seeded inputs; models graphopt cannot compile fail with a clean
`error:` (exit 2) that names the operator the corpus records for them.

Slow: needs the bench extras (`make test-slow`); exports are cached under the model cache.
`python -m bench.models.corpus --table bench/results/corpus.md` runs the same checks and
writes the results table.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

corpus = pytest.importorskip("bench.models.corpus")
CORPUS = corpus.CORPUS

SUPPORTED = [name for name, e in CORPUS.items() if not e.unsupported]
UNSUPPORTED = [name for name, e in CORPUS.items() if e.unsupported]


def _need(name: str) -> None:
    pytest.importorskip("torch", reason="bench extras not installed (make test-slow)")
    entry = CORPUS[name]
    if entry.shipped is not None:
        try:
            entry.shipped()
        except ModuleNotFoundError as err:
            pytest.skip(f"{err} (make test-slow installs the bench extras)")
    elif "torchvision" in entry.source and not corpus.torchvision_available():
        pytest.skip(f"{corpus.TORCHVISION} not installed in {corpus.torchvision_dir()}")


CASES = [
    pytest.param(
        name,
        level,
        marks=[pytest.mark.xfail(reason=CORPUS[name].known_bugs[level], strict=True)]
        if level in CORPUS[name].known_bugs
        else [],
        id=f"{name}-O{level}",
    )
    for name in SUPPORTED
    for level in (0, 1, 2, 3)
]


@pytest.mark.parametrize(("name", "opt_level"), CASES)
def test_corpus_model_matches_onnxruntime(name, opt_level, tmp_path):
    _need(name)
    result = corpus.check(name, opt_level, tmp_path)
    assert result.ok, f"{name} -O{opt_level}: max rel. error {result.max_error:.3g}"


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_corpus_unsupported_model_gives_clean_error(name, tmp_path):
    _need(name)
    result = corpus.check_unsupported(name, tmp_path)
    assert result.ok, f"{name}: {result.error}"
