"""select_in_model: tuning records judged by their kernels' time in the model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from graphopt.inputs import random_inputs
from graphopt.tuning.select_in_model import MIN_GAIN, choose, kernel_calls, time_in_sequence


def _sleeper(seconds: float):
    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return run


def test_kernels_are_timed_per_name_over_all_their_calls():
    tuned = [("conv_prepacked", _sleeper(2e-4), []), ("conv_prepacked", _sleeper(2e-4), [])]
    tuned.append(("add", _sleeper(1e-4), []))
    default = [
        ("conv", _sleeper(1e-4), []),
        ("conv", _sleeper(1e-4), []),
        ("add", _sleeper(3e-4), []),
    ]
    t, d = time_in_sequence([tuned, default], rounds=9)
    assert set(t) == set(d) == {"conv", "add"}  # `_prepacked` is the schedule stage's suffix
    assert 380 < t["conv"] < 600 and 180 < d["conv"] < 400  # two calls each
    selection = choose(t, d, ["conv", "add"])
    assert selection["add"]["applied"] and not selection["conv"]["applied"]
    assert selection["add"]["measured"] == "in the model"


def test_a_record_must_win_by_the_margin():
    d = {"k": 100.0}
    assert not choose({"k": 100.0 * (1 - MIN_GAIN / 2)}, d, ["k"])["k"]["applied"]
    assert choose({"k": 100.0 * (1 - 2 * MIN_GAIN)}, d, ["k"])["k"]["applied"]
    missing = choose({}, d, ["k"])["k"]  # a kernel the tuned build does not call
    assert not missing["applied"] and missing["tuned_us"] is None


def test_kernel_calls_replay_the_model(compiled):
    """The captured calls are the model's kernels with the run's tensors: replaying them
    without the VM recomputes the same output."""
    art = compiled("cnn")
    feed = random_inputs(art.inputs)
    calls = kernel_calls(art, feed)
    # Every call_tir launch except reshapes, which run as views (vm.builtin.reshape).
    assert 3 < len(calls) <= art.manifest["report"]["kernel_calls"]
    want = art.run(feed)
    out = calls[-1][2][-1]  # the last kernel's output tensor
    out.copyfrom(np.zeros(out.shape, dtype=out.dtype))
    for _name, func, args in calls:
        func(*args)
    np.testing.assert_allclose(out.numpy(), next(iter(want.values())), rtol=1e-5, atol=1e-6)


def test_records_must_win_again_beside_the_other_winners(monkeypatch, tmp_path):
    """Round 1 (every record applied): a and b win. Round 2 (only a and b): b loses without c
    beside it, so only a stays applied."""
    import graphopt.compiler
    import graphopt.tuning.select_in_model as sim

    applied: list[list[str]] = []

    def compile_model(_model, _out, opts):
        records = list(applied[-1]) if opts.tuning_db else []
        return SimpleNamespace(records=records, inputs=[])

    def kernel_calls(build, _feed):
        us = {"a": 100.0, "b": 100.0, "c": 100.0}
        if "a" in build.records:
            us["a"] = 50.0
        if "b" in build.records:
            us["b"] = 50.0 if "c" in build.records else 150.0
        if "c" in build.records:
            us["c"] = 150.0
        return [(k, _sleeper(v * 1e-6), []) for k, v in us.items()]

    monkeypatch.setattr(graphopt.compiler, "compile_model", compile_model)
    monkeypatch.setattr(sim, "kernel_calls", kernel_calls)
    selection = sim.select_in_model(
        "m.onnx", tmp_path, _Opts(), applied.append, ["a", "b", "c"], say=lambda _m: None
    )
    assert applied == [["a", "b", "c"], ["a", "b"], ["a"]]
    assert [n for n, v in selection.items() if v["applied"]] == ["a"]


@dataclass
class _Opts:
    tuning_db: object = None
