"""Single kernels, side by side: untuned TVM, `schedule-cpu`, numpy and onnxruntime.

    python -m bench.bench_kernels [--runs N] [--naive-runs N] [--only matmul_256x256x256,...]

For each kernel family (matmul, conv2d 3x3 stride 1/2, depthwise, pointwise) one Relax module
is built with the operator (and its bias), run through the x86 legalize stage and lowered
twice: without schedules (TVM's naive loops, x86 option schedules=false) and with the
`schedule-cpu` pass in the schedule stage. The same operator runs in onnxruntime (a one-node
ONNX model) and, for matmul, in numpy. Outputs are checked against the naive build; the fast
contestants are timed interleaved (medians); the naive build, up to seconds per run, gets its
own few runs. Writes bench/results/kernels.json and kernels.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every runtime here keeps its idle worker threads spinning for a while after a parallel
# region; interleaved, those spinning threads steal the cores the next contestant needs
# (numpy's 256^3 matmul went from 0.17 to 16 ms after TVM, TVM's 197x3072x768 matmul from
# 2.3 to 8 ms after onnxruntime). None of the three spins here: OpenBLAS and TVM are told
# before their thread pools start (graphopt.env also gives TVM every core: 0.27 assumes 2-way
# SMT on x86 and would use half), onnxruntime in its session options.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402 - after OPENBLAS_THREAD_TIMEOUT

from bench.writing import write_results  # noqa: E402
from graphopt import env  # noqa: E402

env.configure_for_benchmarks(spinning=False)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Kernel:
    name: str
    family: str
    shape: str
    flops: int
    inputs: list[np.ndarray]
    relax_mod: Callable[[], Any]  # -> tvm.IRModule
    onnx_model: Callable[[], Any]  # -> onnx.ModelProto
    numpy_fn: Callable[[], Any] | None = None
    notes: list[str] = field(default_factory=list)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _relax_func(inputs: list[np.ndarray], build) -> Any:
    from tvm import relax

    bb = relax.BlockBuilder()
    params = [
        relax.Var(f"x{i}", relax.TensorType(a.shape, "float32")) for i, a in enumerate(inputs)
    ]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _onnx_model(nodes, inputs, initializers, out_shape) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "kernel",
        [
            helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(a.shape))
            for i, a in enumerate(inputs)
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v, name=k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def matmul_kernel(m: int, n: int, k: int, gelu: bool = False) -> Kernel:
    from onnx import helper
    from tvm import relax

    x = _rng(0).standard_normal((m, k)).astype("float32")
    w = (_rng(1).standard_normal((k, n)) / np.sqrt(k)).astype("float32")
    b = _rng(2).standard_normal(n).astype("float32")

    def build(bb, xv):
        y = bb.emit(relax.op.matmul(xv, relax.const(w)))
        if gelu:
            y = bb.emit(relax.op.add(y, relax.const(b)))
            y = bb.emit(relax.op.nn.gelu(y))
        return y

    def onnx_model():
        nodes = [helper.make_node("MatMul", ["x0", "w"], ["mm" if gelu else "y"])]
        init = {"w": w}
        if gelu:
            init.update(b=b, sqrt2=np.array(np.sqrt(2.0), "float32"))
            init.update(one=np.array(1.0, "float32"), half=np.array(0.5, "float32"))
            nodes += [
                helper.make_node("Add", ["mm", "b"], ["h"]),
                helper.make_node("Div", ["h", "sqrt2"], ["d"]),
                helper.make_node("Erf", ["d"], ["e"]),
                helper.make_node("Add", ["e", "one"], ["e1"]),
                helper.make_node("Mul", ["h", "e1"], ["p"]),
                helper.make_node("Mul", ["p", "half"], ["y"]),
            ]
        return _onnx_model(nodes, [x], init, (m, n))

    name = f"matmul_{m}x{n}x{k}" + ("_bias_gelu" if gelu else "")
    return Kernel(
        name=name,
        family="matmul + bias + gelu" if gelu else "matmul",
        shape=f"M={m} N={n} K={k}",
        flops=2 * m * n * k,
        inputs=[x],
        relax_mod=lambda: _relax_func([x], build),
        onnx_model=onnx_model,
        numpy_fn=None if gelu else (lambda: np.matmul(x, w)),
    )


def conv_kernel(
    family: str, c: int, hw: int, o: int, k: int, stride: int, groups: int = 1
) -> Kernel:
    from onnx import helper
    from tvm import relax

    pad = k // 2
    x = _rng(0).standard_normal((1, c, hw, hw)).astype("float32")
    w = (_rng(1).standard_normal((o, c // groups, k, k)) / np.sqrt(c * k * k / groups)).astype(
        "float32"
    )
    b = _rng(2).standard_normal(o).astype("float32")
    out = (hw + 2 * pad - k) // stride + 1

    def build(bb, xv):
        y = bb.emit(
            relax.op.nn.conv2d(xv, relax.const(w), strides=stride, padding=pad, groups=groups)
        )
        return relax.op.add(y, relax.const(b.reshape(1, o, 1, 1)))

    def onnx_model():
        node = helper.make_node(
            "Conv",
            ["x0", "w", "b"],
            ["y"],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
        )
        return _onnx_model([node], [x], {"w": w, "b": b}, (1, o, out, out))

    name = f"{family.split()[0]}_{k}x{k}s{stride}_{hw}x{hw}x{c}_to_{o}"
    return Kernel(
        name=name,
        family=family,
        shape=f"1x{c}x{hw}x{hw} -> 1x{o}x{out}x{out}, k{k} s{stride} p{pad} g{groups}",
        flops=2 * o * out * out * (c // groups) * k * k,
        inputs=[x],
        relax_mod=lambda: _relax_func([x], build),
        onnx_model=onnx_model,
    )


def kernels() -> list[Kernel]:
    return [
        matmul_kernel(256, 256, 256),
        matmul_kernel(1024, 1024, 1024),
        matmul_kernel(197, 3072, 768),
        matmul_kernel(197, 3072, 768, gelu=True),
        matmul_kernel(256, 1024, 8192),  # K x 64 columns of B over L2: K blocked
        conv_kernel("conv2d 3x3", 64, 56, 64, 3, 1),
        conv_kernel("conv2d 3x3 stride 2", 64, 56, 64, 3, 2),
        conv_kernel("depthwise 3x3", 32, 112, 32, 3, 1, groups=32),
        conv_kernel("depthwise 3x3 stride 2", 96, 112, 96, 3, 2, groups=96),
        conv_kernel("pointwise 1x1", 64, 56, 128, 1, 1),
        # MobileNetV2's stem and its widest expansion: little reduction per output.
        conv_kernel("conv2d 3x3 stride 2", 3, 224, 32, 3, 2),
        conv_kernel("pointwise 1x1", 16, 112, 96, 1, 1),
    ]


# ------------------------------------------------------------------------------------ building


def build_pair(kernel: Kernel) -> tuple[Callable, Callable, dict[str, Any]]:
    """(naive runner, scheduled runner, pass stats) for the kernel's Relax module."""
    import tvm
    from tvm import relax

    from graphopt.pass_infra import make_pass
    from graphopt.pipeline import instantiate, parse_pipeline, run_passes
    from graphopt.target_infra import make_target

    target = make_target("x86")
    stages = target.stages()

    def stage(mod, name):
        with target.tvm_target():
            return run_passes(mod, instantiate(parse_pipeline(",".join(stages[name]))), stage=name)

    legal = stage(kernel.relax_mod(), "legalize")
    sched_pass = make_pass("schedule-cpu")
    with target.tvm_target():
        result = sched_pass(legal)
    stats = {k: v for k, v in result.stats.items() if v}
    runners = []
    for mod in (legal, result.module):
        ex = tvm.compile(
            stage(mod, "lower"),
            target=target.tvm_target(),
            relax_pipeline=None,
            tir_pipeline=target.tir_pipeline(),
        )
        vm = relax.VirtualMachine(ex, tvm.cpu())
        args = [tvm.runtime.tensor(a) for a in kernel.inputs]
        fn = vm["main"]
        runners.append(lambda fn=fn, args=args: fn(*args))
    return runners[0], runners[1], {"stats": stats, "errors": getattr(sched_pass, "errors", {})}


def _ort_session(model: bytes) -> Any:
    """graphopt.reference.ort_session's settings, with spinning worker threads turned off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = env.num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        return _to_numpy(value[0])
    return value.numpy()


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def bench_kernel(kernel: Kernel, runs: int, naive_runs: int, say) -> dict[str, Any]:
    from graphopt.timing import interleaved

    naive, scheduled, info = build_pair(kernel)
    session = _ort_session(kernel.onnx_model().SerializeToString())
    feed = {f"x{i}": a for i, a in enumerate(kernel.inputs)}

    def ort():
        return session.run(["y"], feed)

    ref = _to_numpy(naive())
    errors = {
        "scheduled": _rel_err(_to_numpy(scheduled()), ref),
        "onnxruntime": _rel_err(_to_numpy(ort()), ref),
    }
    contestants = {"scheduled": scheduled, "onnxruntime": ort}
    if kernel.numpy_fn is not None:
        contestants["numpy"] = kernel.numpy_fn
        errors["numpy"] = _rel_err(_to_numpy(kernel.numpy_fn()), ref)
    say(f"  timing {', '.join(contestants)} ({runs} interleaved runs)")
    timings = interleaved(contestants, runs=runs, warmup=3)
    say(f"  timing naive ({naive_runs} runs)")
    naive_t = interleaved({"naive": naive}, runs=naive_runs, warmup=1)["naive"]
    ms = {name: t.median_ms for name, t in timings.items()}
    ms["naive"] = naive_t.median_ms
    row = {
        "name": kernel.name,
        "family": kernel.family,
        "shape": kernel.shape,
        "flops": kernel.flops,
        "median_ms": {k: round(v, 4) for k, v in ms.items()},
        "timings": {
            **{k: t.to_json() for k, t in timings.items()},
            "naive": naive_t.to_json(),
        },
        "gflops": {k: round(kernel.flops / (v * 1e6), 1) for k, v in ms.items()},
        "speedup_vs_naive": round(ms["naive"] / ms["scheduled"], 1),
        "scheduled_over_onnxruntime": round(ms["scheduled"] / ms["onnxruntime"], 2),
        "max_rel_error_vs_naive": {k: float(f"{v:.3g}") for k, v in errors.items()},
        "pass_stats": info["stats"],
        "pass_errors": info["errors"],
    }
    if "numpy" in ms:
        row["scheduled_over_numpy"] = round(ms["scheduled"] / ms["numpy"], 2)
    return row


def markdown(report: dict[str, Any]) -> str:
    from graphopt.tables import format_table

    m = report["machine"]
    lines = [
        "# Kernel benchmark: untuned TVM vs schedule-cpu vs numpy / onnxruntime",
        "",
        f"{m['date']} on {m['cpu']} (LLVM cpu {m['llvm_cpu']}, {m['cores']} cores, "
        f"{m['threads']} threads), TVM {m['versions'].get('apache-tvm')}, "
        f"onnxruntime {m['versions'].get('onnxruntime')}, numpy {m['versions'].get('numpy')}.",
        "",
        "Median ms of interleaved runs (naive: its own few runs). `naive` is TVM's legalized",
        "TIR without schedules (x86 `schedules=false`); `sched` adds the `schedule-cpu` pass.",
        "GFLOP/s in brackets. `x naive` = naive / sched; `/ ort` = sched / onnxruntime.",
        "",
    ]
    header = ["kernel", "shape", "naive", "sched", "numpy", "onnxruntime", "x naive", "/ ort"]
    rows = []
    for r in report["kernels"]:
        ms, gf = r["median_ms"], r["gflops"]

        def cell(key, ms=ms, gf=gf):
            return f"{ms[key]:.3f} ({gf[key]:.0f})" if key in ms else "-"

        rows.append(
            [
                r["name"],
                r["shape"],
                cell("naive"),
                cell("scheduled"),
                cell("numpy"),
                cell("onnxruntime"),
                f"{r['speedup_vs_naive']}x",
                r["scheduled_over_onnxruntime"],
            ]
        )
    lines.append(format_table(header, rows))
    lines += ["", "Max relative error against the naive build:", ""]
    err_rows = [
        [
            r["name"],
            *(
                r["max_rel_error_vs_naive"].get(k, "-")
                for k in ("scheduled", "onnxruntime", "numpy")
            ),
        ]
        for r in report["kernels"]
    ]
    lines.append(format_table(["kernel", "sched", "onnxruntime", "numpy"], err_rows))
    if report.get("notes"):
        lines += ["", *report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--naive-runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated kernel names")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from graphopt.machine import machine_info

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    wanted = {n for n in args.only.split(",") if n}
    rows = []
    start = time.perf_counter()
    for kernel in kernels():
        if wanted and kernel.name not in wanted:
            continue
        say(f"{kernel.name}: {kernel.shape}")
        rows.append(bench_kernel(kernel, args.runs, args.naive_runs, say))
        r = rows[-1]
        say(
            f"  naive {r['median_ms']['naive']:.3f} ms, sched {r['median_ms']['scheduled']:.3f} "
            f"ms, ort {r['median_ms']['onnxruntime']:.3f} ms ({r['speedup_vs_naive']}x naive)"
        )
    report = {
        "machine": machine_info(),
        "runs": args.runs,
        "naive_runs": args.naive_runs,
        "seconds": round(time.perf_counter() - start, 1),
        "kernels": rows,
        "notes": [
            f"TVM_THREAD_POOL_SPIN_COUNT={os.environ.get(env.TVM_SPIN.name)}, "
            f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')} and "
            "onnxruntime's session.intra_op.allow_spinning=0: no runtime's idle workers spin "
            "(spinning workers slow the next contestant of an interleaved timing up to 100x).",
            f"TVM_NUM_THREADS={os.environ.get(env.TVM_NUM_THREADS.name)}: without it TVM 0.27 "
            "uses half the cores on x86 (it assumes 2-way SMT) and pins the main thread.",
            "TVM runs on its own thread pool, onnxruntime with "
            "GRAPHOPT_NUM_THREADS (all cores by default), numpy with OpenBLAS's default.",
            "Shared machine: other jobs may run beside the benchmark; medians of interleaved "
            "runs spread that noise over all contestants, p10/p90 are in the JSON.",
        ],
    }
    write_results(args.out, "kernels", report, markdown(report))
    say(f"wrote {args.out / 'kernels.json'} and kernels.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
