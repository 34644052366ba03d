"""What the graph passes do to the real models: operators, kernels, fused groups, latency.

    python -m bench.bench_passes [--runs N] [--models mobilenet_v2,efficientnet_lite0,minilm]

For each model and each level (import = O0, O1, O2, O3, and O3 without attention fusion): the
operators left in the graph, the TIR kernels after the target's legalize stage (launches and
distinct), the fused groups per family, the max error against onnxruntime on real inputs, and
the latency of every level interleaved with onnxruntime in one process (ratios only mean
something side by side). Writes bench/results/passes.json and passes.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

import graphopt
from bench.writing import write_results
from graphopt import env
from graphopt.frontend import import_onnx
from graphopt.instrument import max_relative_error
from graphopt.machine import machine_info
from graphopt.passes import fuse
from graphopt.pipeline import PRESETS, instantiate, parse_pipeline, run_passes
from graphopt.reference import ort_run, ort_session
from graphopt.tables import format_table
from graphopt.timing import interleaved

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenet_v2", "efficientnet_lite0", "minilm")
LEVELS = {
    "import": "",
    "O1": "O1",
    "O2": "O2",
    "O3": "O3",
    # O3 as it was before schedule-cpu's attention rule: attention left to the target's FuseOps.
    "O3-attention": PRESETS["O3"].replace(",fuse,", ",fuse{attention=false},"),
}

# Ops that end a conv's "activation": what conv_act fuses after conv2d (+ bias).
_ACTIVATIONS = {
    "relax.nn.relu",
    "relax.nn.relu6",
    "relax.clip",
    "relax.sigmoid",
    "relax.nn.silu",
    "relax.nn.gelu",
    "relax.tanh",
    "relax.nn.leakyrelu",
    "relax.maximum",
    "relax.minimum",
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _op_name(call: relax.Call) -> str:
    op = call.op
    if isinstance(op, tvm.ir.Op):
        if op.name == "relax.call_tir":
            return "call_tir:" + call.args[0].name_hint
        return op.name
    return "call:" + op.name_hint if isinstance(op, tvm.ir.GlobalVar) else "call:<local>"


def _bindings(func: relax.Function) -> list[relax.VarBinding]:
    return [
        b
        for block in func.body.blocks
        for b in block.bindings
        if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call)
    ]


def _flat_args(call: relax.Call) -> list:
    """A call's arguments, with call_tir's argument tuple opened."""
    out = []
    for arg in call.args:
        out.extend(arg.fields if isinstance(arg, relax.Tuple) else [arg])
    return out


def _is_activation(name: str) -> bool:
    tir = name.removeprefix("call_tir:")
    return name in _ACTIVATIONS or (
        tir != name and tir.rstrip("0123456789") in ("maximum", "minimum")
    )


def fusion_facts(mod: tvm.IRModule) -> dict[str, int]:
    """Structural facts of a graph-level module (before the target's legalize stage).

    operators: calls in the graph functions (a fused group counts once); the rest counts what
    is left unfused (softmax, conv followed by an activation outside any group, batch-norm) and
    the fused groups per family.
    """
    graph = [
        f for f in mod.functions.values() if isinstance(f, relax.Function) and not fuse._sealed(f)
    ]
    facts = dict.fromkeys(
        ("operators", "batch_norm", "softmax_unfused", "conv_unfused_activation"), 0
    )
    for func in graph:
        bindings = _bindings(func)
        users: dict[Any, list[str]] = {}
        for b in bindings:
            for arg in _flat_args(b.value):
                if isinstance(arg, relax.Var):
                    users.setdefault(arg, []).append(_op_name(b.value))
        for b in bindings:
            name = _op_name(b.value)
            facts["operators"] += 1
            facts["batch_norm"] += name == "relax.nn.batch_norm"
            facts["softmax_unfused"] += name == "relax.nn.softmax"
            if name == "relax.nn.conv2d":
                facts["conv_unfused_activation"] += _feeds_activation(b.var, bindings, users)
    layer_norms = sum(1 for call in _calls(mod) if _op_name(call) == "relax.nn.layer_norm")
    facts["layer_norm"] = layer_norms
    facts["conv2d"] = sum(1 for call in _calls(mod) if _op_name(call) == "relax.nn.conv2d")
    for family, count in fuse.composite_calls(mod).items():
        facts[f"group_{family}"] = count
    return facts


def _calls(mod: tvm.IRModule) -> list[relax.Call]:
    """Calls the graph runs: those of graph functions and, per call, those of its callee."""
    out: list[relax.Call] = []

    def visit(e):
        if not isinstance(e, relax.Call):
            return
        out.append(e)
        if isinstance(e.op, tvm.ir.GlobalVar):
            callee = mod[e.op]
            if isinstance(callee, relax.Function):
                relax.analysis.post_order_visit(callee.body, visit)

    for func in mod.functions.values():
        if isinstance(func, relax.Function) and not fuse._sealed(func):
            relax.analysis.post_order_visit(func, visit)
    return out


def _feeds_activation(var, bindings, users) -> bool:
    """conv result, or conv + bias, used by an activation in the same graph function."""
    names = users.get(var, [])
    if any(_is_activation(n) for n in names):
        return True
    for b in bindings:
        if _op_name(b.value) == "relax.add" and any(a.same_as(var) for a in _flat_args(b.value)):
            if any(_is_activation(n) for n in users.get(b.var, [])):
                return True
    return False


def graph_level(path: Path, pipeline: str) -> tuple[dict[str, int], dict[str, dict]]:
    """Import, run the graph pipeline; the structural facts and every pass's counters."""
    mod = import_onnx(path).mod
    rows: dict[str, dict] = {}

    class Log:
        def after_pass(self, index, pass_, stage, before, result, seconds):
            rows[f"{index}:{pass_.name}"] = dict(result.stats)

    mod = run_passes(mod, instantiate(parse_pipeline(pipeline)), [Log()])
    return fusion_facts(mod), rows


def real_inputs(name: str, n: int) -> list[dict]:
    from bench.models.inputs import image_batch, sentence_batch

    return sentence_batch(n) if name == "minilm" else [{"input": x} for x in image_batch(n)]


def bench_model(name: str, runs: int, samples: int, workdir: Path) -> dict[str, Any]:
    from bench.models.export import export

    path = export(name)
    feeds = real_inputs(name, samples)
    session = ort_session(path)
    refs = [ort_run(session, f) for f in feeds]
    levels: dict[str, Any] = {}
    arts = {}
    for level, pipeline in LEVELS.items():
        _say(f"[{name}] {level}: {pipeline or '(no graph passes)'}")
        facts, counters = graph_level(path, pipeline)
        art = graphopt.compile(path, workdir / f"{name}-{level}", pipeline=pipeline)
        report = art.manifest["report"]
        out = art.outputs[0].name
        err = max(max_relative_error([ref[out]], [art.run(f)[out]]) for ref, f in zip(refs, feeds))
        levels[level] = {
            "pipeline": pipeline,
            "facts": facts,
            "kernels": report["kernels"],
            "kernel_calls": report["kernel_calls"],
            "max_rel_error": err,
            "pass_counters": counters,
        }
        arts[level] = art
    feed = feeds[0]
    contestants = {"onnxruntime": lambda: ort_run(session, feed)}
    contestants.update({lv: a.runner(feed) for lv, a in arts.items()})
    _say(f"[{name}] timing {', '.join(contestants)} interleaved, {runs} runs")
    timings = interleaved(contestants, runs=runs, warmup=3)
    base = timings["onnxruntime"].median_ms
    for level in levels:
        levels[level]["latency"] = timings[level].to_json()
        levels[level]["ratio_vs_onnxruntime"] = round(timings[level].median_ms / base, 2)
    return {
        "model": name,
        "onnxruntime": timings["onnxruntime"].to_json(),
        "samples": samples,
        "levels": levels,
    }


def _groups(facts: dict[str, int]) -> str:
    keys = [k for k in facts if k.startswith("group_")]
    return ", ".join(f"{k[6:]} {facts[k]}" for k in keys) or "-"


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    header = [
        "model",
        "level",
        "operators",
        "kernel launches (distinct)",
        "latency ms (vs onnxruntime)",
        "max rel error",
        "fused groups",
        "left unfused",
    ]
    rows = []
    for r in results:
        for level, v in r["levels"].items():
            f = v["facts"]
            left = (
                f"softmax {f['softmax_unfused']}, conv->act {f['conv_unfused_activation']}, "
                f"batch_norm {f['batch_norm']}"
            )
            rows.append(
                [
                    r["model"],
                    level,
                    f["operators"],
                    f"{v['kernel_calls']} ({v['kernels']})",
                    f"{v['latency']['median_ms']:.1f} ({v['ratio_vs_onnxruntime']:.2f}x)",
                    f"{v['max_rel_error']:.1e}",
                    _groups(f),
                    left,
                ]
            )
    ort = ", ".join(f"{r['model']} {r['onnxruntime']['median_ms']:.1f} ms" for r in results)
    return (
        "# Graph passes on the real models: operators, kernels, fused groups, latency\n\n"
        f"{machine['cpu']} ({machine['llvm_cpu']}), {machine['threads']} threads, "
        f"{machine['date']}. The machine was shared with other compile jobs: latencies are "
        "medians of runs interleaved with onnxruntime in one process, and only the ratios in "
        f"one row set compare. onnxruntime: {ort}.\n\n"
        "Operators: calls in the graph after the level's passes (a fused group counts once). "
        "Kernels: TIR kernel launches after the target's legalize stage (LegalizeOps, FuseOps, "
        "FuseTIR), distinct kernels in parentheses. Error: max |graphopt - onnxruntime| "
        "relative to the output scale, on real inputs. Left unfused: at graph level, before "
        "the target's FuseOps (which still fuses a conv with its activation at O2: compare "
        "the kernel launches). `O3` fuses each attention block into one kernel (scheduled by "
        "schedule-cpu's attention rule); `O3-attention` is O3 with the fuse pass's attention "
        "family off (softmax and the two matmuls as separate kernels).\n\n"
        + format_table(header, rows)
        + "\n"
    )


def rewrite_markdown(out: Path = RESULTS) -> None:
    """Regenerate passes.md from passes.json (after changing the table, without re-timing)."""
    data = json.loads((out / "passes.json").read_text())
    (out / "passes.md").write_text(markdown(data["results"], data["machine"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=4, help="real inputs for the error")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    env.configure_for_benchmarks()  # before TVM's thread pool starts (it starts lazily)
    machine = machine_info()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results.append(bench_model(name, args.runs, args.samples, Path(tmp)))
    text = markdown(results, machine)
    write_results(
        args.out, "passes", {"machine": machine, "runs": args.runs, "results": results}, text
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
