"""`--prune ... --max-drop`: the most sensitive layers stay dense until the built artifact is
within the budget, through the same search int8 uses."""

from __future__ import annotations

import json

import model_builders as mb
import numpy as np
import pytest

import graphopt
from graphopt.cli import main
from graphopt.compress.common.budget import fewest_kept


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_budget")
    mb.save(mb.mlp(), root / "mlp.onnx")
    rng = np.random.default_rng(4)
    np.savez(root / "calib.npz", x=rng.standard_normal((128, 32)).astype(np.float32))
    np.savez(root / "eval.npz", x=rng.standard_normal((64, 32)).astype(np.float32))
    return root


def _compile(files, name, *flags):
    out = files / name
    args = ["compile", str(files / "mlp.onnx"), "-o", str(out), "-q", "--prune", *flags]
    assert main(args) == 0
    return graphopt.load(out), json.loads((out / "manifest.json").read_text())["pruning"]


def test_budget_keeps_sensitive_layers_dense(files):
    flags = ["unstructured=0.9", "--prune-method", "magnitude", "--calibration"]
    flags += [str(files / "calib.npz"), "--eval", str(files / "eval.npz")]
    _, free = _compile(files, "free", *flags)
    assert "accuracy" not in free and free["pruned_layers"] == 3
    _, p = _compile(files, "budget", *flags, "--max-drop", "2", "--quant-metric", "cosine")
    acc = p["accuracy"]
    assert acc["metric"] == "min_cosine" and acc["all_pruned"] < acc["dense"] - 2
    assert acc["artifact"] >= acc["dense"] - 2 - 1e-6
    assert p["kept_dense"], "a 90% level cannot stay within 2 points without dense layers"
    rows = {r["layer"]: r for r in p["layers"]}
    for name in p["kept_dense"]:
        assert rows[name]["status"] == "dense" and rows[name]["reason"] == "budget"
        assert rows[name]["zeros"] == 0
    assert len(p["sensitivity"]) == 3


def test_budget_needs_data(files, capsys):
    args = ["compile", str(files / "mlp.onnx"), "-o", str(files / "e"), "-q"]
    assert main([*args, "--prune", "unstructured=0.5", "--max-drop", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --calibration or --eval" in err[0]


def test_fewest_kept_bisection():
    """The shared search: the smallest k whose score is within the budget."""
    scores = {0: 50.0, 1: 60.0, 2: 80.0, 3: 95.0, 4: 99.0}
    k, score = fewest_kept(5, lambda k: scores[k], 100.0, 6.0)
    assert (k, score) == (3, 95.0)
    k, score = fewest_kept(5, lambda k: scores[k], 100.0, 1.0)
    assert (k, score) == (4, 99.0)
    k, score = fewest_kept(5, lambda k: scores[k], 100.0, 25.0)
    assert (k, score) == (2, 80.0)
