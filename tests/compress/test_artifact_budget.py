"""The accuracy budget holds for the built artifact: while a plan's check of the executable
misses its budget, compile keeps one more layer uncompressed and rebuilds; when nothing is left
it says so. The int8 method tightens in sensitivity order (lowest SQNR first)."""

from __future__ import annotations

from dataclasses import dataclass, field

import model_builders as mb
import numpy as np

from graphopt.compiler import CompileOptions, compile_model
from graphopt.compress import CompressionPlan
from graphopt.compress.int8.flow import QuantOptions, _Decided
from graphopt.compress.int8.sensitivity import Sensitivity
from graphopt.pipeline import canonical_text


@dataclass
class ScriptedMethod:
    """A method whose artifact scores come from a script: the Nth build scores scores[N]."""

    scores: list[float]
    name: str = "scripted"
    requires: tuple[str, ...] = ()
    tightened: list[int] = field(default_factory=list)

    def plan(self, mod, ctx, level: int = 0) -> CompressionPlan:
        def check(run):
            run([])  # the runner is called (stubbed below: the scripted score decides)
            return self.scores[level]

        def tighten():
            self.tightened.append(level + 1)
            if level + 1 >= len(self.scores):
                return None
            return self.plan(mod, ctx, level + 1)

        manifest = {"accuracy": {"fp32": 100.0}}
        return CompressionPlan("scripted", [], manifest, check=check, budget=99.0, tighten=tighten)


def _model(tmp_path):
    return mb.save(mb.mlp(), tmp_path / "mlp.onnx")


def _compile(tmp_path, method, messages):
    opts = CompileOptions(compression=[method])
    return compile_model(_model(tmp_path), tmp_path / "out", opts, progress=messages.append)


def test_compile_rebuilds_until_the_artifact_meets_the_budget(tmp_path, monkeypatch):
    _no_input_runs(monkeypatch)
    method, messages = ScriptedMethod([90.0, 95.0, 99.5]), []
    art = _compile(tmp_path, method, messages)
    assert method.tightened == [1, 2]
    assert art.manifest["scripted"]["accuracy"]["artifact"] == 99.5
    assert sum("below the budget" in m for m in messages) == 2
    assert sum(m.startswith("build:") for m in messages) == 3


def test_compile_says_when_nothing_is_left_to_keep(tmp_path, monkeypatch):
    _no_input_runs(monkeypatch)
    method, messages = ScriptedMethod([90.0]), []
    art = _compile(tmp_path, method, messages)
    assert art.manifest["scripted"]["accuracy"]["artifact"] == 90.0
    assert any(m.startswith("warning: scripted") for m in messages)


def _no_input_runs(monkeypatch):
    """The scripted check calls run([]): answer without the model's real inputs."""
    import graphopt.compiler as compiler

    monkeypatch.setattr(compiler, "vm_runner", lambda executable, target: lambda arrays: [])


def test_int8_tightens_the_least_accurate_layer_first(tmp_path):
    from graphopt.compress.common.layers import find_layers
    from graphopt.frontend import import_onnx

    mod = import_onnx(mb.mlp()).mod
    layers = find_layers(mod["main"])
    rows = [{"layer": ly.name, "sqnr_db": db} for ly, db in zip(layers, (30.0, 12.0, 25.0))]
    sens = Sensitivity(rows, 100.0, 97.0, 99.0, "top1_agreement", [], 8)
    decided = _Decided(
        QuantOptions(mode="dynamic", max_drop=1.0), layers, {}, tmp_path / "r.json", {},
        sens, {}, {}, False, None,
    )  # fmt: skip
    first = decided.step([], {})
    assert first.budget == 99.0 and first.manifest["int8_layers"] == len(layers)
    second = first.tighten()
    precision = {d["layer"]: d.get("reason") for d in second.manifest["layers"]}
    assert precision[rows[1]["layer"]] == "artifact budget"
    assert second.manifest["accuracy"]["kept_fp32"] == [rows[1]["layer"]]
    third = second.tighten()
    assert third.manifest["int8_layers"] == len(layers) - 2
    assert "skip=" in canonical_text([p for p in third.passes if p.name == "quantize"])


def test_a_failing_rebuild_keeps_the_previous_build(tmp_path, monkeypatch):
    """A tighter plan whose build fails (a lowering bug) leaves the last good build and says
    so: a missed budget is a warning, never a failed compile."""
    import graphopt.compiler as compiler

    _no_input_runs(monkeypatch)
    monkeypatch.setattr(compiler, "_recompress", _raise_in_rebuild)
    method, messages = ScriptedMethod([90.0, 99.5]), []
    art = _compile(tmp_path, method, messages)
    assert art.manifest["scripted"]["accuracy"]["artifact"] == 90.0
    assert any("rebuilding with more layers uncompressed failed (boom)" in m for m in messages)
    assert art.run({"x": np.zeros((4, 32), np.float32)})["probs"].shape == (4, 10)


def _raise_in_rebuild(job):
    raise RuntimeError("boom")
