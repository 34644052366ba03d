"""ONNX backend node-test conformance: TVM's bare flow against graphopt's import + O2 + compile.

    python -m bench.conformance [--limit N] [--jobs J] [--filter SUBSTR] [--timeout S]

The onnx wheel no longer ships the node tests' data files, so the cases are regenerated with
onnx's own generator (`onnx.backend.test.case.node.collect_testcases`). Every case runs once per
flow, each in its own process (some cases hang or segfault the interpreter), and is classified as
pass / wrong / import_error / compile_error / runtime_error / timeout. Results go to
bench/results/onnx_conformance.json (per case) and .md (summary).
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.writing import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "onnx_conformance"
FLOWS = ("bare", "graphopt")
CATEGORIES = ("pass", "wrong", "import_error", "compile_error", "runtime_error", "timeout")
CATEGORY_TITLES = {
    "pass": "pass",
    "wrong": "wrong numbers",
    "import_error": "import error",
    "compile_error": "compile error",
    "runtime_error": "runtime error",
    "timeout": "timeout",
}
# A failure is blamed on the phase the worker had reached (it reports each one as it enters it).
PHASE_CATEGORY = {
    "start": "import_error",
    "import": "import_error",
    "compile": "compile_error",
    "run": "runtime_error",
    "compare": "runtime_error",
}
# Imported once by the fork server, so each per-case worker starts in milliseconds, not seconds.
PRELOAD = [
    "numpy",
    "onnx",
    "tvm",
    "tvm.relax",
    "tvm.relax.frontend.onnx",
    "graphopt",
    "graphopt.compiler",
    "onnx_ir",
    "onnx_ir.passes.common",
    "onnxscript.optimizer._constant_folding",
]


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """One node test, reduced to picklable parts for a worker process."""

    name: str
    model: bytes
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    input_names: list[str]
    output_names: list[str]
    rtol: float
    atol: float


def to_array(value: Any) -> Any:
    """Data-set entries are arrays, numpy scalars or TensorProtos (for float8, int4, ...)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def unrunnable_reason(test_case: Any) -> str | None:
    """Why a case cannot be checked here at all, or None: keeps the 'runnable' count honest."""
    graph = test_case.model.graph
    kinds = {v.type.WhichOneof("value") for v in [*graph.input, *graph.output]}
    if kinds - {"tensor_type"}:
        return "sequence/optional inputs or outputs"
    inputs, outputs = test_case.data_sets[0]
    values = [to_array(v) for v in [*inputs, *outputs]]
    if any(not isinstance(v, np.ndarray) for v in values):
        return "sequence/optional inputs or outputs"
    if any(v.dtype.kind in "OSU" for v in values):
        return "string tensors (TVM has no string dtype)"
    if len(inputs) != len(graph.input):
        return "data set does not feed every graph input"
    return None


def make_case(test_case: Any) -> Case:
    inputs, outputs = test_case.data_sets[0]
    graph = test_case.model.graph
    return Case(
        name=test_case.name,
        model=test_case.model.SerializeToString(),
        inputs=[to_array(v) for v in inputs],
        outputs=[to_array(v) for v in outputs],
        input_names=[v.name for v in graph.input],
        output_names=[v.name for v in graph.output],
        rtol=float(getattr(test_case, "rtol", 1e-3)),
        atol=float(getattr(test_case, "atol", 1e-7)),
    )


def collect_cases(name_filter: str | None) -> tuple[list[Case], list[dict[str, str]]]:
    """Runnable cases and the skipped ones (name, reason), in onnx's order."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        test_cases = collect_testcases(None)
    runnable, skipped = [], []
    for tc in test_cases:
        if name_filter and name_filter not in tc.name:
            continue
        reason = unrunnable_reason(tc)
        if reason:
            skipped.append({"name": tc.name, "reason": reason})
        else:
            runnable.append(make_case(tc))
    return runnable, skipped


# ---------------------------------------------------------------- worker side


def first_line(err: BaseException) -> str:
    """One line that names the failure; TVM errors put the message first, tracebacks after."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def flatten(value: Any) -> list[np.ndarray]:
    """VM results (tensor, shape, tuple of those, scalar) as a flat list of numpy arrays."""
    import tvm_ffi

    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, tvm_ffi.Shape):
        return [np.array(list(value), dtype=np.int64)]
    if isinstance(value, (int, float, bool, np.generic)):
        return [np.asarray(value)]
    return [arr for item in value for arr in flatten(item)]


def run_bare(case: Case, workdir: Path, enter: Callable[[str], None]) -> list[np.ndarray | None]:
    """TVM's own flow, as a TVM user would write it: from_onnx, tvm.compile, VirtualMachine."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    enter("import")
    mod = from_onnx(onnx.load_from_string(case.model))
    enter("compile")
    ex = tvm.compile(mod, target="llvm")
    enter("run")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    # np.ascontiguousarray would turn 0-d inputs into 1-d ones.
    args = [tvm.runtime.tensor(np.asarray(a, order="C")) for a in case.inputs]
    return flatten(vm["main"](*args))


def run_graphopt(case: Case, workdir: Path, enter: Callable[[str], None]):
    """graphopt's flow: compile at O2 for x86 with the data set's static shapes, load, run."""
    import onnx

    import graphopt

    feeds = dict(zip(case.input_names, case.inputs))
    shapes = {name: list(a.shape) for name, a in feeds.items()}

    def progress(msg: str) -> None:
        enter("import" if msg.startswith("import") else "compile")

    enter("import")
    out = workdir / "artifact"
    graphopt.compile(
        onnx.load_from_string(case.model),
        out,
        target="x86",
        opt_level=2,
        input_shapes=shapes,
        progress=progress,
    )
    enter("run")
    outputs = graphopt.load(out).run(feeds)
    return [outputs.get(name) for name in case.output_names]


FLOW_FUNCTIONS = {"bare": run_bare, "graphopt": run_graphopt}


def compare_one(want: np.ndarray, got: np.ndarray | None, rtol: float, atol: float) -> str | None:
    """onnx's backend check: same dtype and shape, then assert_allclose (NaN == NaN)."""
    if got is None:
        return "missing"
    got = np.asarray(got)
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if got.shape != want.shape:
        return f"shape {list(got.shape)}, expected {list(want.shape)}"
    if want.dtype == np.bool_:
        bad = got != want
    else:
        # float8/int4/bfloat16 (ml_dtypes) have no numpy arithmetic: compare as float64.
        w, g = (x.astype(np.float64) if x.dtype.kind not in "biufc" else x for x in (want, got))
        with np.errstate(all="ignore"):
            bad = ~np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
            if not bad.any():
                return None
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))[bad]
        finite = diff[np.isfinite(diff)]
        worst = f"max abs diff {finite.max():.3g}" if finite.size else "inf/nan mismatch"
        return f"{int(bad.sum())}/{bad.size} elements differ, {worst}"
    return f"{int(bad.sum())}/{bad.size} elements differ" if bad.any() else None


def compare(case: Case, got: Sequence[np.ndarray | None]) -> str | None:
    if len(got) != len(case.outputs):
        return f"{len(got)} outputs, expected {len(case.outputs)}"
    for i, (name, want, have) in enumerate(zip(case.output_names, case.outputs, got)):
        problem = compare_one(want, have, case.rtol, case.atol)
        if problem:
            return f"output {i} '{name}': {problem}"
    return None


def worker(conn: Any, flow: str, case: Case, workdir: str) -> None:
    """Run one flow on one case; report each phase as entered, then the result, then exit."""
    work = Path(workdir)
    log = os.open(work / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    phase = "start"

    def enter(name: str) -> None:
        nonlocal phase
        if name != phase:
            phase = name
            conn.send(("phase", name))

    start = time.perf_counter()
    try:
        got = FLOW_FUNCTIONS[flow](case, work, enter)
        enter("compare")
        problem = compare(case, got)
        status, message = ("pass", "") if problem is None else ("wrong", problem)
    except Exception as err:  # noqa: BLE001 - every failure is a result to record
        status, message = PHASE_CATEGORY[phase], first_line(err)
    conn.send(
        (
            "done",
            {
                "status": status,
                "message": message,
                "seconds": round(time.perf_counter() - start, 3),
            },
        )
    )
    conn.close()
    os._exit(0)  # skip interpreter teardown: TVM's thread pools sometimes hang in it


# ---------------------------------------------------------------- scheduler


@dataclass
class Running:
    """A worker process in flight and what the parent knows about it."""

    index: int
    flow: str
    proc: Any
    conn: Any
    workdir: Path
    started: float = field(default_factory=time.monotonic)
    phase: str = "start"


def start_task(ctx: Any, index: int, flow: str, case: Case, tmp_root: Path) -> Running:
    workdir = Path(tempfile.mkdtemp(prefix=f"{case.name}-{flow}-", dir=tmp_root))
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=worker, args=(send, flow, case, str(workdir)), daemon=True)
    proc.start()
    send.close()  # so the parent sees EOF when the worker dies
    return Running(index, flow, proc, recv, workdir)


def stderr_tail(workdir: Path) -> str:
    """Last meaningful line a crashed worker wrote (LLVM and TVM print their reason there)."""
    try:
        lines = (workdir / "stderr.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [ln.strip() for ln in lines if ln.strip() and "Warning" not in ln]
    reasons = [ln for ln in lines if re.search(r"error|check failed|fault|abort", ln, re.I)]
    return (reasons or lines or [""])[-1][:200]


def crash_result(task: Running, seconds: float) -> dict[str, Any]:
    code = task.proc.exitcode
    how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
    tail = stderr_tail(task.workdir)
    message = f"worker crashed ({how}) during {task.phase}" + (f": {tail}" if tail else "")
    return {"status": PHASE_CATEGORY[task.phase], "message": message, "seconds": round(seconds, 3)}


def poll_task(task: Running, timeout: float) -> dict[str, Any] | None:
    """The task's result if it has one now (finished, crashed or timed out), else None."""
    elapsed = time.monotonic() - task.started
    try:
        while task.conn.poll():
            kind, payload = task.conn.recv()
            if kind == "phase":
                task.phase = payload
            else:
                return payload
    except (EOFError, OSError):
        task.proc.join(5)
        return crash_result(task, elapsed)
    if not task.proc.is_alive() and not task.conn.poll():
        return crash_result(task, elapsed)
    if elapsed > timeout:
        return {
            "status": "timeout",
            "message": f"timed out after {timeout:g}s during {task.phase}",
            "seconds": round(elapsed, 3),
        }
    return None


def finish_task(task: Running) -> None:
    task.proc.join(2)
    if task.proc.is_alive():
        task.proc.kill()
        task.proc.join(5)
    task.conn.close()
    shutil.rmtree(task.workdir, ignore_errors=True)


def run_tasks(
    cases: Sequence[Case],
    jobs: int,
    timeout: float,
    on_result: Callable[[int, str, dict[str, Any]], None],
) -> None:
    """Run every (case, flow) in its own process, `jobs` at a time."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    pending = collections.deque((i, flow) for i in range(len(cases)) for flow in FLOWS)
    running: list[Running] = []
    with tempfile.TemporaryDirectory(prefix="onnx-conformance-") as tmp:
        while pending or running:
            while pending and len(running) < jobs:
                index, flow = pending.popleft()
                running.append(start_task(ctx, index, flow, cases[index], Path(tmp)))
            waitables = [t.conn for t in running] + [t.proc.sentinel for t in running]
            mp.connection.wait(waitables, timeout=1.0)
            for task in list(running):
                result = poll_task(task, timeout)
                if result is not None:
                    running.remove(task)
                    finish_task(task)
                    on_result(task.index, task.flow, result)


# ---------------------------------------------------------------- progress and reports


class Progress:
    """Counts results as they come and prints a progress line on stderr now and then."""

    def __init__(self, total: int, every: float = 10.0) -> None:
        self.total = total
        self.every = every
        self.started = time.monotonic()
        self.last = 0.0
        self.flows_done: collections.Counter[int] = collections.Counter()
        self.passed = dict.fromkeys(FLOWS, 0)

    def update(self, index: int, flow: str, result: dict[str, Any]) -> None:
        self.flows_done[index] += 1
        self.passed[flow] += result["status"] == "pass"
        done = sum(1 for n in self.flows_done.values() if n == len(FLOWS))
        now = time.monotonic()
        if now - self.last >= self.every or done == self.total:
            self.last = now
            print(self.line(done, now - self.started), file=sys.stderr, flush=True)

    def line(self, done: int, elapsed: float) -> str:
        left = elapsed / done * (self.total - done) if done else 0.0
        passes = ", ".join(f"{flow} {n} pass" for flow, n in self.passed.items())
        return (
            f"[{done:4d}/{self.total} cases] {passes} | {fmt_seconds(elapsed)} elapsed, "
            f"~{fmt_seconds(left)} left"
        )


def fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def totals(results: Sequence[dict[str, Any]], flow: str) -> dict[str, int]:
    counts = collections.Counter(r[flow]["status"] for r in results)
    return {c: counts.get(c, 0) for c in CATEGORIES}


def normalize(message: str) -> str:
    """Group messages that differ only in numbers or quoted names."""
    message = re.sub(r"(?<!\w)'[^']*'", "'…'", message)  # not the apostrophe in "TVM's"
    message = re.sub(r'"[^"]*"', '"…"', message)
    message = re.sub(r"(?<==)[\w.]+", "…", message)  # TVM's ErrorContext(param=min, ...)
    message = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", message)
    return message[:160]


def top_errors(results: Sequence[dict[str, Any]], flow: str, n: int = 15) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for r in results:
        res = r[flow]
        if res["status"] != "pass":
            groups[(res["status"], normalize(res["message"]))].append(r["name"])
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:n]
    return [
        {"status": status, "message": msg, "count": len(names), "examples": names[:3]}
        for (status, msg), names in ranked
    ]


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("onnx", "apache-tvm", "apache-tvm-ffi", "graphopt", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["graphopt_git"] = git_state()
    return out


def git_state() -> dict[str, Any]:
    """The commit graphopt ran from, and its uncommitted files: the version alone says little."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = [ln[3:] for ln in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "modified": changed}


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def build_report(
    results: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    settings: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    bare_only = [
        r for r in results if r["bare"]["status"] == "pass" and r["graphopt"]["status"] != "pass"
    ]
    graphopt_only = [
        r for r in results if r["graphopt"]["status"] == "pass" and r["bare"]["status"] != "pass"
    ]
    return {
        "versions": versions(),
        "machine": machine(),
        "settings": settings,
        "wall_seconds": round(wall, 1),
        "totals": {
            "cases": len(results) + len(skipped),
            "not_runnable": len(skipped),
            "runnable": len(results),
            **{flow: totals(results, flow) for flow in FLOWS},
        },
        "pass_bare_fail_graphopt": [r["name"] for r in bare_only],
        "pass_graphopt_fail_bare": [r["name"] for r in graphopt_only],
        "top_errors": {flow: top_errors(results, flow) for flow in FLOWS},
        "not_runnable": skipped,
        "cases": results,
    }


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_totals(report: dict[str, Any]) -> list[str]:
    t = report["totals"]
    runnable = t["runnable"] or 1
    lines = ["| result | TVM bare flow | graphopt O2 |", "|---|---:|---:|"]
    for cat in CATEGORIES:
        cells = [f"{t[flow][cat]} ({100 * t[flow][cat] / runnable:.1f}%)" for flow in FLOWS]
        lines.append(f"| {CATEGORY_TITLES[cat]} | {' | '.join(cells)} |")
    lines.append(f"| **runnable** | {t['runnable']} | {t['runnable']} |")
    return lines


def md_differences(report: dict[str, Any], shown: int = 10) -> list[str]:
    """Cases that pass in one flow only, grouped by the other flow's (folded) failure message."""
    by_name = {r["name"]: r for r in report["cases"]}
    lines = []
    for key, title, failing in [
        ("pass_bare_fail_graphopt", "Pass in the bare TVM flow, fail in graphopt", "graphopt"),
        ("pass_graphopt_fail_bare", "Pass in graphopt, fail in the bare TVM flow", "bare"),
    ]:
        names = report[key]
        lines += ["", f"## {title} ({len(names)})", ""]
        if not names:
            lines.append("None.")
            continue
        groups: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for name in names:
            res = by_name[name][failing]
            groups[(res["status"], normalize(res["message"]))].append(name)
        lines += [f"| count | {failing} result | message | cases |", "|---:|---|---|---|"]
        for (status, message), group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            more = f" (+{len(group) - shown} more)" if len(group) > shown else ""
            lines.append(
                f"| {len(group)} | {CATEGORY_TITLES[status]} | {md_escape(message)} | "
                f"{', '.join(group[:shown])}{more} |"
            )
    return lines


def md_top_errors(report: dict[str, Any]) -> list[str]:
    lines = []
    for flow, title in (("bare", "TVM bare flow"), ("graphopt", "graphopt O2")):
        lines += [
            "",
            f"## Most frequent failures: {title}",
            "",
            "| count | result | message (numbers and quoted names folded) | e.g. |",
            "|---:|---|---|---|",
        ]
        for e in report["top_errors"][flow]:
            lines.append(
                f"| {e['count']} | {CATEGORY_TITLES[e['status']]} | "
                f"{md_escape(e['message'])} | {', '.join(e['examples'])} |"
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    v, m, s, t = report["versions"], report["machine"], report["settings"], report["totals"]
    skipped = collections.Counter(x["reason"] for x in report["not_runnable"])
    partial = " (partial run: --limit/--filter)" if s["limit"] or s["filter"] else ""
    lines = [
        f"# ONNX backend node-test conformance{partial}",
        "",
        f"{m['date']} on {m['platform']}, {m['cpu']} ({m['cpu_count']} CPUs). "
        f"onnx {v['onnx']}, apache-tvm {v['apache-tvm']}, apache-tvm-ffi {v['apache-tvm-ffi']}, "
        f"graphopt {v['graphopt']}, Python {v['python']}. "
        f"{s['jobs']} jobs, {s['timeout']:g}s timeout per case and flow; "
        f"took {fmt_seconds(report['wall_seconds'])}." + _rerun_note(s.get("rerun_failed")),
        "",
        "Cases come from onnx's generator (`collect_testcases`). **Bare TVM flow**: `from_onnx`, "
        '`tvm.compile(target="llvm")`, `VirtualMachine`. **graphopt O2**: '
        '`graphopt.compile(target="x86", opt_level=2, input_shapes=<data set shapes>)`, '
        "`graphopt.load(...).run(...)`. Outputs must match onnx's check: same dtype and shape, "
        "then `assert_allclose` with the case's rtol/atol (NaN equals NaN).",
        "",
        f"{t['cases']} cases: {t['runnable']} runnable, {t['not_runnable']} not runnable ("
        + ", ".join(f"{n} {reason}" for reason, n in skipped.items())
        + ").",
        "",
        *md_totals(report),
        *md_differences(report),
        *md_top_errors(report),
    ]
    return "\n".join(lines) + "\n"


def _rerun_note(rerun: dict[str, Any] | None) -> str:
    if not rerun:
        return ""
    return (
        f" The {rerun['cases']} cases graphopt failed in that run were run again on "
        f"{rerun['date']} with the code of that day (`--rerun-failed`, "
        f"{fmt_seconds(rerun['seconds'])}); the totals include them."
    )


def write_outputs(report: dict[str, Any], prefix: Path) -> None:
    write_results(prefix.parent, prefix.name, report, markdown(report), indent=1)


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.conformance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--limit", type=int, default=None, help="run only the first N runnable cases")
    p.add_argument("--jobs", type=int, default=2, help="worker processes at a time (default 2)")
    p.add_argument("--filter", default=None, help="only cases whose name contains SUBSTR")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per case and flow (default 120)"
    )
    p.add_argument(
        "--out", type=Path, default=RESULTS, help=f"output path without suffix (default {RESULTS})"
    )
    p.add_argument(
        "--rerun-failed",
        action="store_true",
        help="run again only the cases graphopt failed in OUT.json and update it in place",
    )
    return p.parse_args(argv)


def previous_failures(prefix: Path) -> tuple[dict[str, Any], set[str]]:
    """The full report at `prefix`.json and the names of the cases graphopt failed there."""
    path = prefix.with_suffix(".json")
    if not path.exists():
        sys.exit(f"error: --rerun-failed needs a previous full run at {path}")
    report = json.loads(path.read_text())
    if report["settings"].get("limit") or report["settings"].get("filter"):
        sys.exit(f"error: {path} is a partial run; --rerun-failed updates a full one")
    failed = {c["name"] for c in report["cases"] if c["graphopt"]["status"] != "pass"}
    return report, failed


def merge_rerun(old: dict[str, Any], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The old run's cases with the re-run ones replaced (same order)."""
    fresh = {r["name"]: r for r in new}
    return [fresh.get(c["name"], c) for c in old["cases"]]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Each worker runs alone on a core: TVM's thread pool would oversubscribe them.
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    cases, skipped = collect_cases(args.filter)
    if args.limit is not None:
        cases = cases[: args.limit]
    previous = None
    if args.rerun_failed:
        previous, failed = previous_failures(args.out)
        cases = [c for c in cases if c.name in failed]
    print(
        f"{len(cases)} runnable cases ({len(skipped)} not runnable), {args.jobs} jobs",
        file=sys.stderr,
        flush=True,
    )
    results = [{"name": c.name} for c in cases]
    progress = Progress(len(cases))

    def on_result(index: int, flow: str, result: dict[str, Any]) -> None:
        results[index][flow] = result
        progress.update(index, flow, result)

    start = time.monotonic()
    run_tasks(cases, args.jobs, args.timeout, on_result)
    settings = {
        "limit": args.limit,
        "filter": args.filter,
        "jobs": args.jobs,
        "timeout": args.timeout,
    }
    wall = time.monotonic() - start
    if previous is not None:
        rerun = {"date": machine()["date"], "cases": len(cases), "seconds": round(wall, 1)}
        results = merge_rerun(previous, results)
        settings = {**previous["settings"], "rerun_failed": rerun}
        wall = previous["wall_seconds"]
    report = build_report(results, skipped, settings, wall)
    if previous is not None:  # the header describes the full run; the re-run has its note
        report["machine"], report["versions"] = previous["machine"], previous["versions"]
    write_outputs(report, args.out)
    t = report["totals"]
    print(
        f"bare {t['bare']['pass']}/{t['runnable']} pass, graphopt {t['graphopt']['pass']}/"
        f"{t['runnable']} pass; wrote {args.out}.json and .md",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
