"""Tuning: records persist per target, a second run resumes, compile --db applies them.

Tests that run MetaSchedule are marked `tuning` (and slow): they build and measure real
candidates.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphopt
from graphopt.compiler import CompileOptions
from graphopt.errors import TargetError
from graphopt.models import DEFAULT_MODEL, load_eval
from graphopt.tuning.database import database_dir, resolve_database
from graphopt.tuning.tune import plan_trials, tune_model, tuning_cost

tuning = pytest.mark.tuning
slow = pytest.mark.slow


def test_plan_follows_the_time_share():
    assert plan_trials([3.0, 1.0], 8) == [6, 2]
    plan = plan_trials([5.0, 0.0, 2.0, 3.0], 7)
    assert sum(plan) == 7 and plan[1] == 0 and plan[0] >= plan[3] >= plan[2]
    assert plan_trials([0.0, 0.0], 3) in ([2, 1], [1, 2])  # nothing measured: even split
    assert plan_trials([1.0, 1.0], 0) == [0, 0]
    assert sum(plan_trials([1e-9, 1.0, 2.0], 1000)) == 1000


@tuning
@slow
def test_tune_resume_and_apply(tmp_path):
    db = tmp_path / "db"
    first = tune_model(DEFAULT_MODEL, db, CompileOptions(), trials=4)
    assert first.stopped == "done" and first.trials_before == 0
    assert first.trials_after >= 4
    again = tune_model(DEFAULT_MODEL, db, CompileOptions(), trials=first.trials_after)
    assert again.stopped == "nothing to do" and again.trials_before == first.trials_after
    more = tune_model(DEFAULT_MODEL, db, CompileOptions(), trials=first.trials_after + 4)
    assert more.trials_before == first.trials_after and more.trials_after > first.trials_after

    art = graphopt.compile(DEFAULT_MODEL, tmp_path / "tuned", tuning_db=db)
    assert art.manifest["tuning_db"] == str(first.database / "applied")
    selection = json.loads((first.database / "applied" / "selection.json").read_text())
    assert any(v["tuned_us"] and v["default_us"] for v in selection.values()), selection
    assert "MetaScheduleApplyDatabase" in art.manifest["stages"]["schedule"]
    x, y = load_eval()
    plain = graphopt.compile(DEFAULT_MODEL, tmp_path / "plain")
    for i in range(5):
        feed = {"input": x[i : i + 1]}
        np.testing.assert_allclose(
            art.run(feed)["logits"], plain.run(feed)["logits"], rtol=1e-5, atol=1e-5
        )
    info = json.loads((first.database / "target.json").read_text())
    assert info["target"] == "x86"
    cost = tuning_cost(first.database)  # two runs measured something; "nothing to do" did not
    assert cost["runs"] == 2 and cost["trials"] == more.trials_after and cost["minutes"] > 0


def test_database_is_per_target_options(tmp_path):
    from graphopt.target_infra import make_target

    a = database_dir(tmp_path, make_target("x86", {"mcpu": "znver3"}))
    b = database_dir(tmp_path, make_target("x86", {"mcpu": "skylake"}))
    assert a != b
    with pytest.raises(TargetError, match="no tuning records"):
        resolve_database(tmp_path, make_target("x86"))


@tuning
@slow
def test_budget_stops_the_search_and_keeps_records(tmp_path):
    """The budget stop raised inside MetaSchedule's callback can come back through TVM's FFI as
    a bare RuntimeError (a 40-minute MiniLM run crashed at its end that way)."""
    summary = tune_model(DEFAULT_MODEL, tmp_path, CompileOptions(), trials=64, budget_seconds=1e-3)
    assert summary.stopped == "budget"
    assert summary.trials_after > 0
    assert tuning_cost(summary.database)["runs"] == 1


def test_default_kernel_with_a_padded_weight_pack_is_measured():
    """A GEMV's weight is packed and padded to whole panels (AVX-512: 1000 -> 1024 columns,
    AVX2: 500 -> 512): the default schedule is measured on its packed weight, as compile
    prepacks it (before, the measurement failed and the tuned record won unmeasured)."""
    import tvm
    from tvm import relax

    from graphopt.pipeline import instantiate, parse_pipeline, run_passes
    from graphopt.target_infra import make_target
    from graphopt.targets.cpu import schedules as rules
    from graphopt.tuning.tune import _measure, without_rewrite

    target = make_target("x86")
    lanes = rules.cpu_info(target.tvm_target()).lanes
    nr = 2 * lanes  # panel width of a wide N: two SIMD registers of columns
    n = 31 * nr + lanes // 2  # no whole number of registers: padded to 32 panels
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(rng.standard_normal((64, n)).astype("float32"))
            out = bb.emit_output(relax.op.matmul(x, w))
        bb.emit_func_output(out)
    with target.tvm_target():
        legal = run_passes(bb.get(), instantiate(parse_pipeline("tvm.LegalizeOps")))
    (kernel,) = [f for f in legal.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    outcome = rules.schedule_func(kernel, rules.cpu_info(target.tvm_target()), target)
    assert outcome.rule == "matmul" and outcome.prepack
    mod = tvm.IRModule({"main": outcome.func})
    weight = without_rewrite(mod)["main"].params[1]
    assert [int(d) for d in weight.ty.shape] == [32, 64, nr]  # [N / nr, K, nr], N padded
    (seconds,) = _measure([mod], target.tvm_target())
    assert seconds is not None and seconds > 0


def test_measuring_leaves_no_exported_kernels_behind(tmp_path, monkeypatch):
    """LocalBuilder exports each kernel into a fresh temporary folder and LocalRunner leaves
    it: the default-vs-tuned measurement deletes them (they filled /tmp by ~230 MB a run)."""
    import tempfile

    import tvm
    from tvm.script import tirx as T

    from graphopt.target_infra import make_target
    from graphopt.tuning.tune import _measure

    @T.prim_func
    def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
        for i in range(64):
            b[i] = a[i] + T.float32(1)

    # Builder workers are new processes: they read TMPDIR when they start.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (seconds,) = _measure([tvm.IRModule({"main": add_one})], make_target("x86").tvm_target())
    assert seconds is not None and seconds > 0
    assert list(tmp_path.iterdir()) == []


def test_first_ctrl_c_asks_to_stop_and_the_second_interrupts():
    import os
    import signal
    import time

    from graphopt.tuning.tune import stop_on_interrupt

    previous = signal.getsignal(signal.SIGINT)
    state: dict = {}
    said: list[str] = []
    with stop_on_interrupt(state, said.append):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert state["interrupted"] and "Ctrl-C again" in said[0]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is previous


@tuning
@slow
def test_ctrl_c_during_a_batch_stops_and_keeps_its_records(tmp_path):
    """SIGINT arrives while MetaSchedule reports a batch (as from a terminal): the batch ends,
    no other starts, and what it measured is in the database."""
    import os
    import signal

    def progress(message: str):
        if " trials, tasks " in message:  # a measurement report (progress bar), in MetaSchedule
            os.kill(os.getpid(), signal.SIGINT)

    summary = tune_model(DEFAULT_MODEL, tmp_path, CompileOptions(), trials=256, progress=progress)
    assert summary.stopped == "interrupted"
    assert 0 < summary.trials_after < 256
