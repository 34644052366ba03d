"""The machine's fp32 peak, and graphopt's 1024^3 matmul as a fraction of it, next to numpy.

    python -m bench.bench_peak [--runs N]

Peak: a C loop of independent FMA chains on the widest vectors the compiler targets with
-march=native (AVX-512 or AVX2), one OpenMP thread per core; FLOPs = 2 per lane per FMA.
Matmul: an ONNX MatMul (activation x constant weight) compiled by graphopt -O2, timed
interleaved with numpy's BLAS on the same arrays: graphopt's VM called on TVM tensors, numpy
into a preallocated output (converting 8 MB per call, and faulting in a fresh output, cost
either ~10% at this size). Writes bench/results/peak.{json,md}.

Wall time depends on what else the machine runs; CPU time does not (much): the matmul's
GFLOP per CPU-second over the FMA loop's (one thread, also per CPU-second) is the schedule's
efficiency per core, comparable across loaded and quiet runs. TVM's workers do not spin
(TVM_THREAD_POOL_SPIN_COUNT=0), so its CPU time is the work done.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# OpenBLAS workers spin for 2^28 cycles (~70 ms) after every call, longer than graphopt's
# whole matmul: interleaved with numpy, graphopt's two threads ran beside two spinning ones
# (44 GFLOP/s against 59 alone, loaded machine). 2^4 cycles: they sleep at once. Read when
# OpenBLAS loads, so it is set before numpy is imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphopt  # noqa: E402
from bench.writing import write_results  # noqa: E402
from graphopt import env  # noqa: E402
from graphopt.machine import machine_info  # noqa: E402
from graphopt.tables import format_table  # noqa: E402
from graphopt.timing import interleaved  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N = 1024

FMA_LOOP = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#if defined(__AVX512F__)
typedef __m512 vec; enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec; enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif
enum { CHAINS = 12 };
int main(int argc, char** argv) {
  long iters = atol(argv[1]);
  float sink = 0.0f;
  double start = omp_get_wtime();
#pragma omp parallel reduction(+:sink)
  {
    vec acc[CHAINS];
    vec a = SET1(0.999999f), b = SET1(1e-7f);
    for (int c = 0; c < CHAINS; ++c) acc[c] = SET1((float)c);
    for (long i = 0; i < iters; ++i)
      for (int c = 0; c < CHAINS; ++c) acc[c] = FMA(acc[c], a, b);
    vec total = acc[0];
    for (int c = 1; c < CHAINS; ++c) total = ADD(total, acc[c]);
    float out[LANES]; STORE(out, total); sink += out[0];
  }
  double seconds = omp_get_wtime() - start;
  double flops = 2.0 * LANES * CHAINS * (double)iters * omp_get_max_threads();
  printf("%d %d %.6f %.1f\n", LANES, omp_get_max_threads(), seconds, sink);
  return (int)(flops < 0);
}
"""


def fma_peak(threads: int, iters: int = 50_000_000, repeats: int = 5) -> dict:
    """Best-of-N GFLOP/s of the FMA loop (the best run is the closest to the hardware)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(FMA_LOOP)
        subprocess.run(
            ["gcc", "-O3", "-march=native", "-fopenmp", str(src), "-o", str(exe), "-lm"], check=True
        )
        best, per_cpu_s, lanes = 0.0, 0.0, 0
        for run in range(repeats + 1):
            # The last run on one thread, for the peak per CPU-second of one core.
            nthreads_env = threads if run < repeats else 1
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            out = subprocess.run(
                [str(exe), str(iters)],
                check=True,
                capture_output=True,
                text=True,
                env={"OMP_NUM_THREADS": str(nthreads_env)},
                # TVM pins its process to one core: the child must not inherit that.
                preexec_fn=lambda: os.sched_setaffinity(0, range(os.cpu_count() or 1)),
            ).stdout
            cpu_s = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
            lanes, nthreads, seconds = (float(v) for v in out.split()[:3])
            flop = 2 * lanes * 12 * iters * nthreads
            if run < repeats:
                best = max(best, flop / seconds / 1e9)
            else:
                per_cpu_s = flop / cpu_s / 1e9
    return {
        "gflops": round(best, 1),
        "lanes": int(lanes),
        "threads": threads,
        "gflops_per_cpu_second": round(per_cpu_s, 1),
    }


def cpu_time_gflops(fn, flop: float, runs: int) -> float:
    """Median GFLOP per CPU-second of this process over `runs` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    samples.sort()
    return flop / samples[len(samples) // 2] / 1e9


def matmul_model(weight: np.ndarray):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["c"])],
        "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [N, N])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [N, N])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vm_runner(library: Path, a: np.ndarray):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    fn = VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())["main"]
    arg = tvm.runtime.tensor(a)
    return lambda: fn(arg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    env.configure_for_benchmarks(spinning=False)
    threads = env.num_threads()
    peak = fma_peak(threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N, N), dtype=np.float32)
    w = rng.standard_normal((N, N), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        art = graphopt.compile(matmul_model(w), Path(tmp) / "mm")
        got = art.run({"a": a})["c"]
        err = float(np.max(np.abs(got - a @ w)) / np.max(np.abs(a @ w)))
        run = _vm_runner(art.library_path, a)
        out = np.empty_like(a)
        timings = interleaved(
            {"graphopt": run, "numpy": lambda: np.matmul(a, w, out=out)}, runs=args.runs, warmup=3
        )
        flop = 2.0 * N**3
        per_cpu_s = cpu_time_gflops(run, flop, args.runs)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    rows, result = [], {"machine": machine_info(), "peak": peak, "max_rel_error": err}
    result["load_average"] = load
    efficiency = per_cpu_s / peak["gflops_per_cpu_second"]
    result["graphopt_cpu_time"] = {
        "gflops_per_cpu_second": round(per_cpu_s, 1),
        "fraction_of_core_peak": round(efficiency, 3),
    }
    for name, t in timings.items():
        gflops = flop / (t.median_ms / 1000) / 1e9
        result[name] = {
            **t.to_json(),
            "gflops": round(gflops, 1),
            "fraction_of_peak": round(gflops / peak["gflops"], 3),
        }
        rows.append(
            [name, f"{t.median_ms:.2f}", f"{gflops:.1f}", f"{100 * gflops / peak['gflops']:.0f}%"]
        )
    table = format_table(["1024^3 fp32 matmul", "median ms", "GFLOP/s", "of peak"], rows)
    text = (
        f"# fp32 peak and matmul\n\nFMA-loop peak: **{peak['gflops']} GFLOP/s** "
        f"({peak['lanes']} lanes, {peak['threads']} threads, best of 5).\n\n{table}\n\n"
        f"max relative error vs numpy: {err:.1e}\n\n"
        f"Per CPU-second (load-independent): graphopt's matmul {per_cpu_s:.1f} GFLOP, the FMA "
        f"loop on one core {peak['gflops_per_cpu_second']} GFLOP: **{100 * efficiency:.0f}% "
        "of the core's peak**.\n\n"
        f"Load average {load} when done: on a shared 2-core machine the matmul (two threads in "
        "lockstep) loses far more to other jobs than the FMA loop's best of 5.\n"
    )
    write_results(args.out, "peak", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
