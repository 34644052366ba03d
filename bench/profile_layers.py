"""Where the time goes: graphopt's kernels and onnxruntime's nodes, layer by layer, in one process.

    python -m bench.profile_layers [--model mobilenet_v2] [--runs 300] [--db DB_ROOT]

graphopt's kernels are called directly in model order (the calls its VM makes, captured once)
with each timed; onnxruntime's per-node times come from its own profiler. The two alternate run
by run, with a busy-wait gap between them longer than either runtime's idle-thread spin, so
neither runs beside the other's spinning threads. Both spin GRAPHOPT_SPIN_US between their own
kernels. Medians per position; a kernel's time in sequence (inputs just written by the previous
kernel, weights cold) is what the model pays, not its time in a loop of its own (warm caches:
MobileNetV2's kernels sum to ~0.8x of their in-sequence time).

Writes bench/results/layers_<model>.md and .json.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import graphopt
from bench.writing import write_results
from graphopt import env
from graphopt.machine import machine_info
from graphopt.reference import session_options
from graphopt.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results"
GAP_S = 0.002  # > both runtimes' idle spin (onnxruntime's outlasts its spin_duration_us)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _busy_wait(seconds: float) -> None:
    """Wait without sleeping: a sleeping timer thread lets the VM idle its vCPU, which then
    wakes slowly (a 0.2 ms sleep between runs slowed both runtimes ~1 ms here)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def kernel_calls(art: graphopt.Artifact, feed: dict[str, np.ndarray]) -> list[tuple]:
    """(function, name, arguments) of every kernel one run of the VM calls, in order."""
    vm = art._machine()
    calls: list[tuple] = []

    def record(func, name, before, _ret, *args):
        if before and not name.startswith("vm.builtin"):
            calls.append((func, name, list(args)))
        return 0

    vm.set_instrument(record)
    art.run(feed)
    return calls


def ort_node_times(profile_path: str) -> list[tuple[str, str, list[float]]]:
    """(node, op, microseconds per run) from an onnxruntime profile, in execution order."""
    events = json.loads(Path(profile_path).read_text())
    times: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            ops.setdefault(node, e["args"].get("op_name", "?"))
            times[node].append(float(e["dur"]))
    return [(node, ops[node], times[node]) for node in ops]


def profile(model: Path, runs: int, workdir: Path, db: Path | None) -> dict[str, Any]:
    import onnxruntime as ort

    _say(f"compiling {model.name} with graphopt -O2" + (f" --db {db}" if db else ""))
    art = graphopt.compile(model, workdir / "art", opt_level=2, tuning_db=db)
    rng = np.random.default_rng(0)
    feed = {s.name: rng.random(s.shape, dtype=np.float32).astype(s.dtype) for s in art.inputs}
    calls = kernel_calls(graphopt.load(art.directory), feed)

    so = session_options()
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / "ort")
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])

    kernel_s: list[list[float]] = [[] for _ in calls]
    for i in range(runs + 10):
        session.run(None, feed)
        _busy_wait(GAP_S)
        for k, (func, _name, args) in enumerate(calls):
            start = time.perf_counter()
            func(*args)
            if i >= 10:  # warm-up
                kernel_s[k].append(time.perf_counter() - start)
        _busy_wait(GAP_S)
        if (i + 1) % max(1, (runs + 10) // 5) == 0:
            _say(f"{i + 1}/{runs + 10} runs")
    nodes = ort_node_times(session.end_profiling())
    graphopt_rows = [
        {"kernel": name, "median_us": round(statistics.median(t) * 1e6, 1)}
        for (_f, name, _a), t in zip(calls, kernel_s)
    ]
    ort_rows = [
        {"node": node, "op": op, "median_us": round(statistics.median(t[10:] or t), 1)}
        for node, op, t in nodes
    ]
    return {"model": model.stem, "runs": runs, "graphopt": graphopt_rows, "onnxruntime": ort_rows}


def _short(node: str) -> str:
    """/features/features.3/conv/conv.1/conv.1.2/Clip_output_0_nchwc -> features.3/conv/conv.1"""
    parts = [p for p in node.split("/") if p and not p.endswith(("_nchwc", "_output_0"))]
    if len(parts) > 1 and parts[0] in parts[1]:
        parts = parts[1:]  # "/features/features.3/..." repeats the module name
    return "/".join(parts[:3]) or node.strip("/")


# graphopt kernel names and onnxruntime ops that compute the same layer kind.
_KINDS = {"conv2d": ("Conv", "FusedConv"), "matmul": ("Gemm", "MatMul", "FusedGemm")}


def _kind_g(kernel: str) -> str | None:
    return next((k for k in _KINDS if k in kernel), None)


def _kind_o(op: str) -> str | None:
    return next((k for k, ops in _KINDS.items() if op in ops), None)


def aligned_rows(g: list[dict], o: list[dict]) -> list[tuple[dict | None, dict | None]]:
    """Both lists in execution order, convs and matmuls paired one to one; everything else
    (graphopt's input transpose and mean, onnxruntime's pool / reorder / flatten) alone."""
    rows, i, j = [], 0, 0
    while i < len(g) or j < len(o):
        kg = _kind_g(g[i]["kernel"]) if i < len(g) else None
        ko = _kind_o(o[j]["op"]) if j < len(o) else None
        if i < len(g) and j < len(o) and kg is not None and kg == ko:
            rows.append((g[i], o[j]))
            i, j = i + 1, j + 1
        elif i < len(g) and (kg is None or j >= len(o)):
            rows.append((g[i], None))
            i += 1
        else:
            rows.append((None, o[j]))
            j += 1
    return rows


def markdown(result: dict[str, Any], machine: dict[str, Any]) -> str:
    g, o = result["graphopt"], result["onnxruntime"]
    g_sum = sum(r["median_us"] for r in g)
    o_sum = sum(r["median_us"] for r in o)
    rows = []
    for a, b in aligned_rows(g, o):
        ratio = f"{a['median_us'] / b['median_us']:.2f}" if a and b and b["median_us"] else ""
        rows.append(
            [
                a["kernel"] if a else "",
                f"{a['median_us']:.1f}" if a else "",
                f"{b['median_us']:.1f}" if b else "",
                b["op"] if b else "",
                _short(b["node"]) if b else "",
                ratio,
            ]
        )
    rows.append(["**sum**", f"**{g_sum:.0f}**", f"**{o_sum:.0f}**", "", "", f"{g_sum / o_sum:.2f}"])
    header = ["graphopt kernel", "us", "us", "onnxruntime op", "onnxruntime node", "ratio"]
    return (
        f"# {result['model']}: graphopt kernels vs onnxruntime nodes, in sequence\n\n"
        f"{machine['cpu']} ({machine['llvm_cpu']}), {machine['threads']} threads, "
        f"{machine['date']}, both runtimes spinning {machine['spin_us']} us between their own "
        f"kernels; medians of {result['runs']} alternating runs (`python -m "
        "bench.profile_layers`). Execution order; convs and matmuls paired one to one, other "
        "kernels and nodes on rows of their own (graphopt transposes the input to NHWC in a "
        "kernel of its own; onnxruntime reorders to NCHWc inside its first conv). onnxruntime's "
        "node times come from its profiler, which adds a little per node.\n\n"
        + format_table(header, rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--db", type=Path, help="tuning database root (compile --db)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    env.configure_for_benchmarks()  # before TVM's thread pool starts (it starts lazily)
    from bench.models.export import export

    machine = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        result = profile(export(args.model), args.runs, Path(tmp), args.db)
    text = markdown(result, machine)
    write_results(args.out, f"layers_{args.model}", {"machine": machine, **result}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
