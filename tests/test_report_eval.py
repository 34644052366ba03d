"""`graphopt report --eval`: samples with or without labels, named `x` or as the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphopt
from graphopt.errors import InputError
from graphopt.report import compare

MODEL = Path(graphopt.__file__).parent / "models" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return graphopt.compile(MODEL, tmp_path_factory.mktemp("report") / "a", opt_level=0)


def _samples(art, n: int = 6) -> np.ndarray:
    shape = art.inputs[0].shape
    return np.random.default_rng(0).random((n, *shape[1:])).astype(np.float32)


def test_samples_named_as_the_input_give_top1_agreement_only(artifact, tmp_path):
    x = _samples(artifact)
    np.savez(tmp_path / "named.npz", **{artifact.inputs[0].name: x})
    result = compare(artifact, MODEL, eval_npz=tmp_path / "named.npz", runs=2, warmup=1)
    assert result.eval_samples == 6 and result.top1_agreement == 1.0
    assert result.accuracy == {}
    assert "top-1 agreement" in result.table() and "labelled" not in result.table()


def test_labels_add_both_accuracies(artifact, tmp_path):
    x = _samples(artifact)
    np.savez(tmp_path / "labelled.npz", x=x, y=np.zeros(len(x), np.int64))
    result = compare(artifact, MODEL, eval_npz=tmp_path / "labelled.npz", runs=2, warmup=1)
    assert set(result.accuracy) == {"onnxruntime", "graphopt"}
    assert "accuracy (6 labelled)" in result.table()


def test_no_samples_is_one_clear_error(artifact, tmp_path):
    np.savez(tmp_path / "other.npz", z=_samples(artifact))
    with pytest.raises(InputError, match="needs the samples as 'x' or"):
        compare(artifact, MODEL, eval_npz=tmp_path / "other.npz", runs=2, warmup=1)
