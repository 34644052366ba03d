"""Kernel auto-tuning with MetaSchedule: a persistent JSON database per target, resumable.

    graphopt tune model.onnx --target x86 --db tuning/ --trials 2000

The database lives in `DB/<target>-<hash of the target options>/` so records of different CPUs
never mix; `graphopt compile --db DB` applies the records for its own target. Records are
written as they are measured, so Ctrl-C or an exhausted --budget keeps everything found, and
a second run continues towards the same --trials total.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm

from ..compiler import CompileOptions, graph_pipeline_text
from ..errors import GraphoptError, SymbolicShapeError
from ..frontend import import_onnx
from ..pipeline import instantiate, parse_pipeline, run_passes
from ..progress import Meter
from ..target_infra import Target, make_target
from .database import database_dir


class TuningError(GraphoptError):
    """No tasks to tune, an unusable database, or an unreachable RPC tracker."""


def without_rewrite(mod: tvm.IRModule) -> tvm.IRModule:
    """The kernel as measured: weight layout rewrite blocks removed, the weight taken in its
    rewritten layout (MetaSchedule's convention, also used by schedule-cpu's prepacking)."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    try:
        return RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    except RuntimeError:  # a packing block that also pads: split it out as compile does
        return _prepack_split_out(mod)


def _prepack_split_out(mod: tvm.IRModule) -> tvm.IRModule:
    """The kernel reading its packed weight, as schedule-cpu's prepacking leaves it (Relax's
    SplitLayoutRewritePreproc). RemoveWeightLayoutRewriteBlock only takes packs that are plain
    loads: a GEMV's weight packed and padded to whole panels made every default-vs-tuned
    comparison of a 1000-class classifier fail, and the tuned record win unmeasured."""
    from tvm import relax

    func = mod["main"]
    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    *ins, out = func.params
    args = [relax.Var(f"a{i}", relax.TensorType(p.ty.shape, p.ty.dtype)) for i, p in enumerate(ins)]
    bb = relax.BlockBuilder()
    with bb.function("main", args):
        kernel = bb.add_func(func, "kernel")
        y = bb.emit(relax.call_tir(kernel, args, relax.TensorType(out.ty.shape, out.ty.dtype)))
        bb.emit_func_output(y)
    split = relax.transform.SplitLayoutRewritePreproc()(bb.get())
    return tvm.IRModule({"main": split["kernel_prepacked"].with_attr("global_symbol", "main")})


def build_without_tensor_intrin(mod: tvm.IRModule, target: Any, _params: Any) -> Any:
    """MetaSchedule build without importing tvm.s_tir.tensor_intrin in every worker.

    The default builder's import takes 60-120 s on a loaded 2-core machine and its 30 s
    timeout then fails every build, so tuning silently returns untuned kernels. CPU kernels
    are lowered as `compile` lowers them (targets/cpu_lowering.py): what is measured ships.
    CUDA kernels are built under the target with nvcc (MetaSchedule's own builder enters no
    target context and, without a GPU on the build machine, finds no arch).
    """
    if target.kind.name == "cuda":  # as `compile` builds it: nvcc into a fatbin for the arch
        from graphopt.targets.cuda import toolchain

        with toolchain.fatbin_compiler(str(target.attrs["arch"]), ptx=False), target:
            return tvm.tirx.build(mod, target=target, pipeline="default")
    from graphopt.targets.cpu import lowering as cpu_lowering

    pipeline = cpu_lowering.tir_pipeline() if target.kind.name == "llvm" else "default"
    return tvm.tirx.build(without_rewrite(mod), target=target, pipeline=pipeline)


@dataclass
class TuneSummary:
    database: Path
    tasks: int
    trials_before: int
    trials_after: int
    seconds: float
    stopped: str  # "done", "budget", "interrupted", "nothing to do"
    best_us: dict[str, float] = field(default_factory=dict)


def kernels_to_tune(model: Any, opts: CompileOptions, progress=None) -> tuple[Target, Any]:
    """Import, graph passes and the legalize stage: the same kernels `compile` will build."""
    target = make_target(opts.target, opts.target_options)
    graph_passes = instantiate(parse_pipeline(graph_pipeline_text(opts)))
    legalize = instantiate(parse_pipeline(",".join(target.stages()["legalize"])))
    imported = import_onnx(model, opts.input_shapes, progress=progress)
    if imported.dims:
        raise SymbolicShapeError(
            f"tune needs static input shapes, got symbolic dims {', '.join(imported.dims)}: "
            "tune at the size that matters with --input-shape"
        )
    mod = run_passes(imported.mod, graph_passes, stage="graph")
    with target.tvm_target():
        mod = run_passes(mod, legalize, stage="legalize")
    return target, mod


class _BudgetReached(Exception):
    pass


@contextlib.contextmanager
def stop_on_interrupt(state: dict, say: Callable[[str], None]):
    """The first Ctrl-C sets `state["interrupted"]`: the batch being measured ends at its next
    progress report (its records are committed) and no other starts. A second Ctrl-C raises
    KeyboardInterrupt at once. (A KeyboardInterrupt raised inside MetaSchedule's Python
    callbacks comes back through TVM's FFI as a build error, and the search went on.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum, _frame):
        if state.get("interrupted"):
            raise KeyboardInterrupt
        state["interrupted"] = True
        say("tune: stopping after the batch being measured (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress_callback(
    tasks, deadline: float | None, say: Callable[[str], None], start: float, total: int
):
    """A MeasureCallback that prints progress and stops the search at the time budget.

    `state["task"]` is the index (in `tasks`) of the task being tuned: each task is tuned by
    its own MetaSchedule run, whose task ids all read 0.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    best: dict[int, float] = {}
    state = {"n": 0, "task": 0, "done": 0}
    meter = Meter(total, "tune", say, unit="trials")
    meter.start = start

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(
            self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
        ):
            task = state["task"]
            for result in runner_results:
                state["n"] += 1
                if result.error_msg is None and result.run_secs:
                    us = 1e6 * sum(float(s) for s in result.run_secs) / len(result.run_secs)
                    best[task] = min(best.get(task, float("inf")), us)
            note = (
                f"tasks {state['done']}/{len(tasks)}, {tasks[task].task_name[:40]} best "
                f"{best.get(task, float('nan')):.1f} us"
            )
            meter.update(state["n"], note, deadline)
            if deadline is not None and time.perf_counter() > deadline:
                state["budget_reached"] = 1  # the FFI may re-raise it as a bare RuntimeError
                raise _BudgetReached()
            if state.get("interrupted"):
                raise _BudgetReached()  # Ctrl-C: this batch's records are in; stop here

    return Progress(), best, state


def _reset_meta_schedule_handlers() -> None:
    """MetaSchedule rebuilds its logging config from the names of the handlers already on its
    logger and fails on any it did not create itself (a nameless one left by an earlier run or
    by pytest: "'NoneType' object has no attribute 'format'"), so a second tuning run in one
    process crashes. Drop foreign handlers; MetaSchedule re-creates its own.

    MetaSchedule gives its console handler the logger's current level (DEBUG when unset) and
    writes everything to its log files under `<database>/logs` anyway; at WARNING its INFO
    tables (hundreds of lines per run) stay in those files, off the terminal. It resets the
    logger to DEBUG when it configures it, so this runs before every batch.
    """
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.setLevel(logging.WARNING)
    for handler in list(logger.handlers):
        name = handler.get_name() or ""
        if not name.startswith("tvm.s_tir.meta_schedule"):
            logger.removeHandler(handler)


def _task_records(database: Any, task: Any) -> int:
    if not database.has_workload(task.dispatched[0]):
        return 0
    workload = database.commit_workload(task.dispatched[0])
    return len(database.get_top_k(workload, 1 << 30))


def _count_records(database: Any, tasks: list) -> int:
    return sum(_task_records(database, task) for task in tasks)


# Trials per MetaSchedule run of one kernel (one batch of candidates).
BATCH = 64


def plan_trials(shares: list[float], total: int) -> list[int]:
    """Split `total` trials over tasks in proportion to their share of the model's time
    (largest remainders first), so a budget goes where the time is."""
    weight = sum(shares)
    if total <= 0 or not shares:
        return [0] * len(shares)
    if weight <= 0:
        shares, weight = [1.0] * len(shares), float(len(shares))
    exact = [total * s / weight for s in shares]
    plan = [int(e) for e in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (plan[i] - exact[i], -shares[i]))
    for i in by_remainder[: total - sum(plan)]:
        plan[i] += 1
    return plan


def default_latencies(tasks, tvm_target, runner: Any = None) -> list[float | None]:
    """Seconds per call of each task's kernel as compiled without records: its schedule-cpu
    (or schedule-cuda) schedule, or the plain kernel where no rule applies."""
    mods = []
    for task in tasks:
        mod = task.dispatched[0]
        if _is_view(task):
            mods.append(None)  # never runs as a kernel
            continue
        default = _default_schedule(mod["main"], tvm_target)
        mods.append(tvm.IRModule({"main": default}) if default is not None else mod)
    return _measure(mods, tvm_target, runner)


def _default_schedule(func: Any, tvm_target: Any) -> Any:
    """The kernel as `compile` schedules it without records; None where no rule applies."""
    if tvm_target.kind.name == "cuda":
        from graphopt.targets.cuda.schedules import rules as gpu_rules

        with tvm_target:
            outcome = gpu_rules.schedule_func(func, tvm_target)
        return outcome.func if outcome.rule is not None else None
    from graphopt.targets.cpu import schedules as rules

    info = rules.cpu_info(tvm_target)
    default = rules.schedule_func(func, info, tvm_target) if info else None
    return default.func if default is not None and default.rule is not None else None


def tune_model(
    model: Any,
    db_root: str | Path,
    opts: CompileOptions,
    *,
    trials: int = 1000,
    budget_seconds: float | None = None,
    runner: Any = None,
    progress: Callable[[str], None] | None = None,
) -> TuneSummary:
    """Tune the model's kernels for the target; records persist under `db_root`.

    Trials go to the kernels in proportion to their share of the untuned model's time (reshape
    kernels, which run as views, get none), in rounds of one batch per kernel, the slowest
    first; each batch is its own MetaSchedule run, whose records are committed when it ends.
    (One run over all kernels commits nothing until it has sent every kernel a first batch:
    on 2 cores that took MobileNetV2's 33 kernels past a 40-minute budget, 0 records written.)
    """
    from tvm.s_tir import meta_schedule as ms

    say = progress or (lambda _m: None)
    start = time.perf_counter()
    target, mod = kernels_to_tune(model, opts, progress=say)
    tvm_target = target.tvm_target()
    tasks = ms.relax_integration.extract_tasks(mod, tvm_target)
    if not tasks:
        raise TuningError("the model has no kernels to tune")
    work_dir = _open_database(Path(db_root), target)
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    before = sum(_task_records(database, task) for task in tasks)
    say(f"tune: {len(tasks)} tasks, {before} trials already in {work_dir}")
    if before >= trials:
        if not (work_dir / APPLIED / "selection.json").is_file():
            choose_records(model, db_root, opts, tasks, work_dir, say, runner=runner)
        return TuneSummary(work_dir, len(tasks), before, before, 0.0, "nothing to do")
    say("tune: measuring the default schedules")
    defaults = default_latencies(tasks, tvm_target, runner)
    shares = [0.0 if _is_view(t) else t.weight * (s or 0.0) for t, s in zip(tasks, defaults)]
    search = _Search(tasks, defaults, plan_trials(shares, trials - before), shares)
    deadline = start + budget_seconds if budget_seconds else None
    callback, best, state = _progress_callback(tasks, deadline, say, start, trials - before)
    tools = _tools(database, runner)
    with stop_on_interrupt(state, say):
        stopped = search.run(work_dir, tools, callback, state, deadline, say)
    after = _count_records(ms.database.JSONDatabase(work_dir=str(work_dir)), tasks)
    names = {i: t.task_name for i, t in enumerate(tasks)}
    elapsed = time.perf_counter() - start
    best_us = {names[i]: us for i, us in best.items()}
    summary = TuneSummary(work_dir, len(tasks), before, after, elapsed, stopped, best_us)
    log_run(work_dir, summary)
    choose_records(model, db_root, opts, tasks, work_dir, say, runner=runner)
    return summary


def _open_database(db_root: Path, target) -> Path:
    """The target's database folder, with target.json saying what it was tuned for."""
    work_dir = database_dir(db_root, target)
    work_dir.mkdir(parents=True, exist_ok=True)
    about = {
        "target": target.name,
        "options": target.options_dict(),
        "tvm": str(target.tvm_target()),
    }
    (work_dir / "target.json").write_text(json.dumps(about, indent=2) + "\n")
    return work_dir


def _tools(database: Any, runner: Any) -> tuple:
    """Builder, runner (RPC servers, or local), one cost model for every batch (it keeps
    learning from all measured candidates) and the database."""
    from tvm.s_tir import meta_schedule as ms

    cores = os.cpu_count() or 1
    builder = ms.builder.LocalBuilder(
        f_build=build_without_tensor_intrin, timeout_sec=120, max_workers=cores
    )
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores, tree_method="auto")
    return builder, runner or ms.runner.LocalRunner(), cost_model, database


@dataclass
class _Search:
    """Rounds of one batch per kernel, the slowest first: a budget that ends the search early
    leaves records for many kernels, not many records for one."""

    tasks: list
    defaults: list
    left: list[int]
    shares: list[float]

    def run(self, work_dir, tools, callback, state, deadline, say) -> str:
        """Batches until every kernel's trials are spent; returns why it stopped."""
        order = [i for i in sorted(range(len(self.tasks)), key=lambda i: -self.shares[i])]
        order = [i for i in order if self.left[i] > 0]
        while any(self.left[i] > 0 for i in order):
            for i in order:
                if self.left[i] <= 0:
                    continue
                if state.get("interrupted"):
                    return "interrupted"
                if deadline is not None and time.perf_counter() > deadline and state["n"]:
                    return "budget"  # the first batch always runs
                stopped = self._batch(i, work_dir, tools, callback, state, say)
                state["done"] = sum(1 for j in order if self.left[j] <= 0)
                if state.get("budget_reached"):
                    return "budget"
                if stopped != "done":
                    return stopped
        return "done"

    def _batch(self, i: int, work_dir, tools, callback, state, say) -> str:
        batch = min(BATCH, self.left[i])
        default_us = f"{1e6 * self.defaults[i]:.1f} us" if self.defaults[i] else "n/a"
        name = self.tasks[i].task_name
        say(f"tune: {name}: {batch} of {self.left[i]} trials (default {default_us})")
        state["task"] = i
        stopped = _tune_one(self.tasks[i], batch, work_dir, tools, callback, state)
        self.left[i] -= batch
        return stopped


def _is_view(task) -> bool:
    """A reshape kernel: the VM runs it as a view of its input (RewriteDataflowReshape)."""
    from tvm import relax

    return bool(relax.analysis.has_reshape_pattern(task.dispatched[0]["main"]))


def _tune_one(task, trials: int, work_dir: Path, tools, callback, state: dict) -> str:
    """One batch of a kernel's MetaSchedule search; its records are committed when it returns.

    `tools`: the builder, runner, cost model and database shared by every batch.
    """
    builder, runner, model, database = tools
    from tvm.s_tir import meta_schedule as ms

    _reset_meta_schedule_handlers()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted_tasks=[task], work_dir=str(work_dir), space="post-order-apply", seed=0
    )
    if not contexts:
        return "done"
    try:
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work_dir),
            max_trials_global=trials,
            num_trials_per_iter=min(BATCH, trials),
            builder=builder,
            runner=runner,
            database=database,
            cost_model=model,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback],
        )
    except KeyboardInterrupt:
        return "interrupted"
    except Exception as err:  # noqa: BLE001 - the budget stop arrives wrapped by TVM's FFI
        if state.get("interrupted"):
            return "interrupted"
        named = "_BudgetReached" in f"{type(err).__name__} {err}"
        if not (named or state.get("budget_reached")):  # or as a bare RuntimeError
            raise
        return "budget"
    return "done"


APPLIED = "applied"


def select_records(tasks, work_dir: Path, tvm_target, runner: Any = None, say=print) -> dict:
    """Keep a kernel's best record only where it beats the default (schedule-cpu) schedule,
    each kernel measured alone (on the RPC servers when tuning over RPC).

    A search of a few dozen trials per kernel on a loaded machine often ends below the
    rule-based schedule, and applying every record then makes the tuned build slower than the
    untuned one. Both versions of each tuned kernel are built and measured now, side by side
    with the same runner; the winners' records go to DB/<target>/applied/, which
    `compile --db` reads, and DB/<target>/applied/selection.json says who won by how much.
    Where the model runs on this machine, `select_in_model` judges records in the model.
    """
    pairs = _best_records(tasks, work_dir, tvm_target)
    measured = _measure([m for p in pairs.values() for m in p[2:4]], tvm_target, runner)
    selection = {}
    for n, (name, (_, _, _, default_mod)) in enumerate(pairs.items()):
        tuned_s, default_s = measured[2 * n], measured[2 * n + 1]
        keep = (
            default_mod is None
            or default_s is None
            or (tuned_s is not None and tuned_s < default_s)
        )
        selection[name] = {
            "tuned_us": None if tuned_s is None else round(tuned_s * 1e6, 1),
            "default_us": None if default_s is None else round(default_s * 1e6, 1),
            "applied": keep,
            "measured": "alone",
        }
    _write_applied(work_dir, pairs, [n for n, v in selection.items() if v["applied"]])
    return _report_selection(work_dir, selection, say)


def choose_records(
    model, db_root: Path, opts: CompileOptions, tasks, work_dir: Path, say, runner: Any = None
) -> dict:
    """The records `compile --db` applies: judged in the model where it runs here, else (RPC,
    a target this machine cannot run) kernel by kernel with the runner."""
    from .select_in_model import select_in_model

    target = make_target(opts.target, opts.target_options)
    if runner is not None or not target.availability().can_run:
        return select_records(tasks, work_dir, target.tvm_target(), runner=runner, say=say)
    pairs = _best_records(tasks, work_dir, target.tvm_target(), with_defaults=False)

    def write(names):
        _write_applied(work_dir, pairs, names)

    selection = select_in_model(model, Path(db_root), opts, write, list(pairs), say=say)
    return _report_selection(work_dir, selection, say)


def _best_records(tasks, work_dir: Path, tvm_target, with_defaults=True) -> dict[str, tuple]:
    """Task name -> (dispatched module, best record, tuned module, default module or None;
    None too without `with_defaults`)."""
    from tvm.s_tir import meta_schedule as ms

    from graphopt.targets.cpu import schedules as rules

    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    info = rules.cpu_info(tvm_target)
    pairs = {}
    for task in tasks:
        mod = task.dispatched[0]
        if not database.has_workload(mod):
            continue
        top = database.get_top_k(database.commit_workload(mod), 1)
        tuned = database.query_schedule(mod, tvm_target, "main") if top else None
        if tuned is None:
            continue
        default = (
            rules.schedule_func(mod["main"], info, tvm_target) if info and with_defaults else None
        )
        default_mod = (
            tvm.IRModule({"main": default.func}) if default and default.rule is not None else None
        )
        pairs[task.task_name] = (mod, top[0], tuned.mod, default_mod)
    return pairs


def _write_applied(work_dir: Path, pairs: dict[str, tuple], names) -> None:
    """DB/<target>/applied/ holds exactly the records of `names` (a fresh database)."""
    from tvm.s_tir import meta_schedule as ms

    shutil.rmtree(Path(work_dir) / APPLIED, ignore_errors=True)
    (Path(work_dir) / APPLIED).mkdir()
    applied = ms.database.JSONDatabase(work_dir=str(Path(work_dir) / APPLIED))
    for name in names:
        mod, record = pairs[name][:2]
        workload = applied.commit_workload(mod)
        applied.commit_tuning_record(
            ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info
            )
        )


def _report_selection(work_dir: Path, selection: dict, say) -> dict:
    (Path(work_dir) / APPLIED / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    won = sum(1 for v in selection.values() if v["applied"])
    how = next(iter(selection.values()), {}).get("measured", "alone")
    say(
        f"tune: records applied for {won} of {len(selection)} kernels, measured {how} "
        "(the default won the rest)"
    )
    return selection


# Measuring a default against a tuned kernel: 7 repeats of >= 20 ms each, the fastest.
SELECT_EVALUATOR = {"number": 3, "repeat": 7, "min_repeat_ms": 20}


def _measure(mods: list, tvm_target, runner: Any = None) -> list[float | None]:
    """Seconds per call of each module's `main`, the fastest of several repeats (None where it
    failed to build or run): one repeat, MetaSchedule's default, is a coin flip between two
    schedules within a few percent of each other on a loaded machine, and a parallel kernel
    that lost its core for a time slice reads 100x slow (a 60 us conv measured 62 ms)."""
    from tvm.s_tir import meta_schedule as ms

    out: list[float | None] = [None] * len(mods)
    todo = [i for i, m in enumerate(mods) if m is not None]
    if not todo:
        return out
    builder = ms.builder.LocalBuilder(
        f_build=build_without_tensor_intrin, timeout_sec=120, max_workers=os.cpu_count() or 1
    )
    built = builder.build([ms.builder.BuilderInput(mods[i], tvm_target) for i in todo])
    inputs, index = [], []
    for i, result in zip(todo, built):
        if result.error_msg is None:
            # Arguments as built: weight layout rewrites are taken out of the kernel.
            args = ms.arg_info.ArgInfo.from_prim_func(without_rewrite(mods[i])["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args))
            index.append(i)
    runner = runner or ms.runner.LocalRunner(
        evaluator_config=ms.runner.EvaluatorConfig(**SELECT_EVALUATOR)
    )
    try:
        for i, future in zip(index, runner.run(inputs)):
            result = future.result()
            if result.error_msg is None and result.run_secs:
                out[i] = min(float(getattr(s, "value", s)) for s in result.run_secs)
    finally:
        _remove_artifacts(built)
    return out


def _remove_artifacts(built: list) -> None:
    """Delete the temporary folders LocalBuilder exported the kernels into: LocalRunner's
    cleanup leaves them, and one tuning run of MobileNetV2 left 100 of them (~230 MB) in /tmp
    (MetaSchedule's own tuning loop removes its own)."""
    for result in built:
        if result.artifact_path:
            folder = Path(result.artifact_path).parent
            if folder.name.startswith("tmp") and folder.parent == Path(tempfile.gettempdir()):
                shutil.rmtree(folder, ignore_errors=True)


RUNS_LOG = "tuning_runs.json"


def log_run(work_dir: Path, summary: TuneSummary) -> None:
    """Append this run to DB/<target>/tuning_runs.json: what the records cost to find
    (benchmarks report trials and minutes next to tuned latencies)."""
    path = Path(work_dir) / RUNS_LOG
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append(
        {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tasks": summary.tasks,
            "trials_before": summary.trials_before,
            "trials_after": summary.trials_after,
            "seconds": round(summary.seconds, 1),
            "stopped": summary.stopped,
        }
    )
    path.write_text(json.dumps(runs, indent=2) + "\n")


def tuning_cost(work_dir: Path) -> dict[str, Any]:
    """Trials in the database and the minutes all logged runs took to find them."""
    path = Path(work_dir) / RUNS_LOG
    runs = json.loads(path.read_text()) if path.is_file() else []
    return {
        "runs": len(runs),
        "trials": max((r["trials_after"] for r in runs), default=0),
        "minutes": round(sum(r["seconds"] for r in runs) / 60, 1),
    }
