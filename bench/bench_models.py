"""Real models, side by side: onnxruntime fp32, bare TVM, and graphopt, in one process.

    python -m bench.bench_models [--runs N] [--models mobilenet_v2,efficientnet_lite0,minilm]
                                 [--tuned minilm=DB_ROOT ...] [--spin-us US]

For each model: export it once (cached, see bench/models/export.py), compile with graphopt
(-O2, untuned; with --tuned also `compile --db DB_ROOT`, whose trials and tuning minutes come
from the database's tuning_runs.json), try TVM's bare flow (from_onnx + tvm.compile, no
clean-up), check outputs on real inputs (photo crops, sentences) against onnxruntime, then time
all runtimes interleaved and report medians and ratios. Writes bench/results/models.json and
models.md.

Both runtimes' idle threads spin the same bounded time after parallel work, as deployed
(`--spin-us`, default GRAPHOPT_SPIN_US = 200: graphopt's TVM pool and onnxruntime's
`session.intra_op.spin_duration_us`). `--spin-us 0` (neither spins: every parallel kernel pays
a thread wake-up) writes models_nospin.json / .md instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import graphopt
from bench.writing import write_results
from graphopt import env
from graphopt.instrument import max_relative_error
from graphopt.machine import machine_info
from graphopt.reference import ort_run, ort_session
from graphopt.tables import format_table
from graphopt.timing import interleaved

RESULTS = Path(__file__).resolve().parent / "results"
# Untimed runs of a runtime right before each of its timed runs (graphopt.timing.interleaved):
# every timed run then follows its own runtime, whatever the interleaving order.
SETTLE = 1
MODELS = ("mobilenet_v2", "efficientnet_lite0", "minilm")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def real_inputs(name: str, n: int) -> list[dict[str, np.ndarray]]:
    from bench.models.inputs import image_batch, sentence_batch

    if name == "minilm":
        return sentence_batch(n)
    return [{"input": x} for x in image_batch(n)]


def bare_tvm_runner(path: Path, feed: dict[str, np.ndarray]):
    """TVM as a user gets it: from_onnx on the raw export, tvm.compile for plain llvm."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(path)), shape_dict={k: list(v.shape) for k, v in feed.items()})
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    arrays = [tvm.runtime.tensor(feed[p.name]) for p in mod["main"].params]
    return lambda: vm["main"](*arrays)


def accuracy(name: str, art: graphopt.Artifact, session: Any, feeds: list[dict]) -> dict:
    """Agreement with onnxruntime on real inputs: error, top-1 (CNNs) or cosine (embeddings)."""
    out = art.outputs[0].name
    errs, agree, cosines = [], 0, []
    for feed in feeds:
        ref, got = ort_run(session, feed)[out], art.run(feed)[out]
        errs.append(max_relative_error([ref], [got]))
        if name == "minilm":
            a, b = ref.ravel().astype(np.float64), got.ravel().astype(np.float64)
            cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        else:
            agree += int(np.argmax(ref) == np.argmax(got))
    result: dict[str, Any] = {"samples": len(feeds), "max_rel_error": max(errs)}
    if cosines:
        result["min_cosine"] = min(cosines)
    else:
        result["top1_agreement"] = f"{agree}/{len(feeds)}"
    return result


def tuned_build(name: str, path: Path, db_root: Path, workdir: Path):
    """graphopt -O2 with the tuning records of db_root, and what finding them cost."""
    from graphopt.target_infra import make_target
    from graphopt.tuning.database import database_dir
    from graphopt.tuning.tune import tuning_cost

    _say(f"[{name}] compiling with graphopt -O2 --db {db_root}")
    art = graphopt.compile(path, workdir / f"{name}-tuned", opt_level=2, tuning_db=db_root)
    cost = tuning_cost(database_dir(db_root, make_target("x86")))
    return art, {"database": str(db_root), **cost}


def bench_model(
    name: str,
    runs: int,
    samples: int,
    workdir: Path,
    db_root: Path | None = None,
    settle: int = SETTLE,
) -> dict[str, Any]:
    from bench.models.export import export

    path = export(name)
    feeds = real_inputs(name, samples)
    _say(f"[{name}] compiling with graphopt -O2")
    start = time.perf_counter()
    art = graphopt.compile(path, workdir / name, opt_level=2, progress=_say)
    compile_s = time.perf_counter() - start
    session = ort_session(path)
    _say(f"[{name}] compiling with graphopt -O2 --target-opt schedules=false")
    unscheduled = graphopt.compile(
        path, workdir / f"{name}-unscheduled", opt_level=2, target_options={"schedules": "false"}
    )
    entry: dict[str, Any] = {
        "model": name,
        "onnx_bytes": path.stat().st_size,
        "graphopt_compile_s": round(compile_s, 1),
        "kernels": art.manifest["report"]["kernels"],
        "flops": art.manifest["report"]["flops"],
        "accuracy_vs_onnxruntime": accuracy(name, art, session, feeds),
        "accuracy_unscheduled_vs_onnxruntime": accuracy(name, unscheduled, session, feeds),
    }
    feed = feeds[0]
    contestants = {
        "onnxruntime": lambda: ort_run(session, feed),
        "graphopt": art.runner(feed),
    }
    slow = {"graphopt_unscheduled": unscheduled.runner(feed)}
    if db_root is not None:
        tuned, entry["tuning"] = tuned_build(name, path, db_root, workdir)
        entry["accuracy_tuned_vs_onnxruntime"] = accuracy(name, tuned, session, feeds)
        contestants["graphopt_tuned"] = tuned.runner(feed)
    try:
        slow["tvm_bare"] = bare_tvm_runner(path, feed)
    except Exception as err:  # noqa: BLE001 - the failure itself is a result
        entry["tvm_bare_error"] = str(err).strip().splitlines()[-1][:300]
        _say(f"[{name}] bare TVM failed: {entry['tvm_bare_error']}")
    # The slow builds (10-100x) are timed in a group of their own, with onnxruntime again:
    # interleaved with them, graphopt ran up to 3x slower (EfficientNet-Lite0 15.1 vs 5.3 ms;
    # onnxruntime 5.8 vs 3.6 ms): after a 200 ms run the idle vCPU of TVM's sleeping worker
    # wakes late for every parallel kernel.
    entry["latency"], entry["ratio_vs_onnxruntime"] = {}, {}
    for group, group_runs in ((contestants, runs), (slow, max(3, runs // 4))):
        group = {"onnxruntime": contestants["onnxruntime"], **group}
        _say(f"[{name}] timing {', '.join(group)} interleaved, {group_runs} runs")
        timings = interleaved(
            group,
            runs=group_runs,
            warmup=3,
            progress=lambda i, n: _say(f"[{name}] {i}/{n}") if i % max(1, n // 5) == 0 else None,
            settle=settle,
        )
        base = timings["onnxruntime"].median_ms
        for k, t in timings.items():
            if k == "onnxruntime" and k in entry["latency"]:
                continue  # the fast group's onnxruntime is the reference of the table
            entry["latency"][k] = t.to_json()
            entry["ratio_vs_onnxruntime"][k] = round(t.median_ms / base, 2)
    return entry


def _quality(acc: dict[str, Any]) -> str:
    agreement = acc.get("top1_agreement") or f"min cos {acc['min_cosine']:.6f}"
    return f"{acc['max_rel_error']:.1e} / {agreement}"


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    rows = []
    for r in results:
        lat, ratio = r["latency"], r["ratio_vs_onnxruntime"]
        bare = (
            f"{lat['tvm_bare']['median_ms']:.1f} ({ratio['tvm_bare']:.1f}x)"
            if "tvm_bare" in lat
            else "fails: " + r.get("tvm_bare_error", "")[:50]
        )
        if "graphopt_tuned" in lat:
            t = r["tuning"]
            tuned = [
                f"{lat['graphopt_tuned']['median_ms']:.1f} ({ratio['graphopt_tuned']:.2f}x)",
                f"{t['trials']} trials, {t['minutes']:.0f} min",
                _quality(r["accuracy_tuned_vs_onnxruntime"]),
            ]
        else:
            tuned = ["-", "not tuned", "-"]
        rows.append(
            [
                r["model"],
                f"{lat['onnxruntime']['median_ms']:.1f}",
                bare,
                f"{lat['graphopt']['median_ms']:.1f} ({ratio['graphopt']:.2f}x)",
                _quality(r["accuracy_vs_onnxruntime"]),
                *tuned,
                f"{lat['graphopt_unscheduled']['median_ms']:.1f} "
                f"({ratio['graphopt_unscheduled']:.1f}x)",
            ]
        )
    header = [
        "model",
        "onnxruntime ms",
        "bare TVM ms (ratio)",
        "graphopt untuned ms (ratio)",
        "error / agreement",
        "graphopt tuned ms (ratio)",
        "tuning",
        "error / agreement",
        "schedules=false ms (ratio)",
    ]
    return (
        "# Real models: onnxruntime fp32 vs bare TVM vs graphopt untuned and tuned\n\n"
        f"{machine['cpu']} ({machine['llvm_cpu']}), {machine['threads']} threads, "
        f"{machine['date']}, load average {machine.get('load_average', '?')} (other jobs on the "
        "machine: compare ratios, not absolute times); medians of interleaved runs in one "
        "process; schedules=false and bare TVM in a second interleaved group with onnxruntime "
        "(their ratios are against that group's onnxruntime). "
        + _protocol(machine["spin_us"], machine.get("settle", 0))
        + " Errors are max "
        "|graphopt - onnxruntime| relative to the output scale, over real inputs.\n\n"
        + format_table(header, rows)
        + "\n"
    )


def _protocol(spin_us: int, settle: int) -> str:
    order = (
        f" Each timed run follows {settle} untimed run(s) of the same runtime (not another "
        "runtime's, whose threads may still be spinning)."
        if settle
        else " Each timed run follows whichever runtime ran before it."
    )
    if spin_us <= 0:
        return (
            "Neither runtime's idle threads spin (each parallel kernel pays a thread wake-up)."
            + order
        )
    return (
        f"Both runtimes' idle threads spin {spin_us} us after parallel work, then sleep "
        "(TVM_THREAD_POOL_SPIN_COUNT for graphopt, session.intra_op.spin_duration_us for "
        "onnxruntime)." + order
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=10, help="real inputs for accuracy")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--tuned",
        action="append",
        default=[],
        metavar="MODEL=DB_ROOT",
        help="also time `compile --db DB_ROOT` for MODEL (repeatable)",
    )
    parser.add_argument(
        "--spin-us",
        type=int,
        help="idle-thread spin of both runtimes, us (default GRAPHOPT_SPIN_US; 0: no spinning)",
    )
    parser.add_argument(
        "--settle",
        type=int,
        default=SETTLE,
        help=f"untimed runs of a runtime before each timed one (default {SETTLE})",
    )
    args = parser.parse_args(argv)
    tuned = dict(item.split("=", 1) for item in args.tuned)
    if args.spin_us is not None:
        os.environ[env.SPIN_US.name] = str(args.spin_us)
    env.configure_for_benchmarks()  # before TVM's thread pool starts (it starts lazily)
    machine = machine_info()
    machine["load_average"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    machine["settle"] = args.settle
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            db = Path(tuned[name]) if name in tuned else None
            results.append(
                bench_model(name, args.runs, args.samples, Path(tmp), db, settle=args.settle)
            )
    stem = "models" if machine["spin_us"] > 0 else "models_nospin"
    text = markdown(results, machine)
    write_results(args.out, stem, {"machine": machine, "runs": args.runs, "results": results}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
