"""`--prune macs=X --max-drop D` (graphopt/compress/channels/budget.py): the MAC levels, the
search stopping where the score leaves the budget, and the CLI."""

from __future__ import annotations

import numpy as np
import onnx

import graphopt
from graphopt import cli
from graphopt.compress.channels.budget import STEP, macs_levels
from graphopt.compress.channels.method import ChannelOptions, Channels
from tests.compress.test_prune_channels import _conv_model


def test_levels_run_from_the_floor_to_the_unpruned_model():
    levels = macs_levels(0.7)
    assert levels[0] == 0.7 and levels[-1] == 1.0
    steps = np.diff(levels)
    assert np.all(steps > 0) and np.all(steps <= STEP + 1e-9)
    assert macs_levels(0.99) == [0.99, 1.0]


def _compile(tmp_path, max_drop: float):
    onnx.save(_conv_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(6).standard_normal([48, 8, 12, 12]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    opts = ChannelOptions(
        macs=0.4, calibration=str(tmp_path / "calib.npz"), multiple=4, max_drop=max_drop
    )
    out = tmp_path / f"out_{max_drop:g}"
    return graphopt.compile(tmp_path / "m.onnx", out, compression=[Channels(opts)])


def test_a_tight_budget_stops_above_the_floor(tmp_path):
    art = _compile(tmp_path, max_drop=0.05)  # min cosine within 0.0005 of the dense model
    m = art.manifest["channels"]
    b = m["budget"]
    assert 0.4 < b["chosen"] < 1.0 and b["max_drop"] == 0.05
    tried = {float(k): v for k, v in b["levels"].items()}
    assert tried[0.4] < b["dense"] - 0.05  # the floor missed, so the search went up
    below = [v for k, v in tried.items() if k < b["chosen"]]
    assert below and all(v < b["dense"] - 0.05 for v in below)
    assert m["accuracy"]["artifact"] >= b["dense"] - 0.05 - 1e-6
    assert m["ratio"] <= b["chosen"] + 0.05


def test_a_loose_budget_takes_the_floor(tmp_path):
    art = _compile(tmp_path, max_drop=100.0)
    b = art.manifest["channels"]["budget"]
    assert b["chosen"] == 0.4 and list(b["levels"]) == ["0.4"]


def test_cli_prune_macs_with_max_drop(tmp_path, capsys):
    onnx.save(_conv_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(7).standard_normal([32, 8, 12, 12]).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    argv = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out")]
    argv += ["--prune", "macs=0.5", "--max-drop", "1", "--calibration", str(tmp_path / "c.npz")]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "prune macs: --max-drop 1: scoring MAC levels 0.5x..1x" in err
    m = graphopt.load(tmp_path / "out").manifest["channels"]
    assert m["settings"]["max_drop"] == 1.0 and "budget" in m


def test_a_negative_budget_is_a_user_error(tmp_path, capsys):
    onnx.save(_conv_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 8, 12, 12), np.float32))
    argv = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out")]
    argv += ["--prune", "macs=0.5", "--max-drop", "-1", "--calibration", str(tmp_path / "c.npz")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --max-drop must be >= 0"]
    assert not (tmp_path / "out").exists()
