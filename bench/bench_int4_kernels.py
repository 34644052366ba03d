"""The int4 matmul kernels alone: W4A8 vs W4 x fp32 vs the int8 flow's dynamic kernel, and
batch-1 GEMVs against the int4 weights' memory-bandwidth bound.

    python -m bench.bench_int4_kernels [--runs 50] [--threads 2]

- Kernels built for this host (`materialize-int4`'s choice of scheme), timed with TVM's
  time_evaluator (best of 5 repeats of --runs calls); weights random, int4 group 32
  asymmetric fp32 scales, activations random normal.
- Bandwidth: numpy copy of a 256 MiB fp32 array (read + write bytes / time), one thread; the
  GEMV bound is the int4 weight bytes (nibbles, scales, zero points) over it. 8192 x 8192's
  36 MB of int4 weights do not fit in the caches; MiniLM's 384 x 1536 do.
- W4A8 register tiles: for 128 rows every (rows x vectors) tile of TILES, to choose the default
  (`a8_kernels.plan_for`).
Writes bench/results/int4_kernels.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [(1, 384, 1536), (1, 1536, 384), (1, 4096, 4096), (1, 8192, 8192), (128, 384, 1536)]
SHAPES += [(128, 1536, 384)]
TILES = [(3, 2), (4, 2), (6, 2), (3, 3), (4, 3)]  # (rows, vectors of 8 channels)


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """GB/s of a numpy copy (read + write), best of `repeats`."""
    src = np.ones(mib << 18, np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _time(lib, args, runs: int) -> float:
    import tvm

    f = lib.time_evaluator("main", tvm.cpu(), number=runs, repeat=5)
    return min(f(*args).results) * 1e3


def _kernels(m: int, k: int, n: int, tiles: bool):
    """(name, PrimFunc, constants) of each contestant for an [m, k] x [k, n] matmul."""
    from graphopt.compress.int4.quant import quantize_rtn
    from graphopt.int4_ops import Int4MatmulSpec
    from graphopt.targets.cpu.int4 import a8_kernels as A8
    from graphopt.targets.cpu.int4 import kernels as K4
    from graphopt.targets.cpu.int8 import kernels as K8
    from graphopt.targets.cpu.int8.kernels import resolve_isa

    rng = np.random.default_rng(0)
    q = quantize_rtn(rng.standard_normal((k, n)).astype(np.float32), 32, False)
    nat = (q.packed, q.scales, q.zeros)
    spec = Int4MatmulSpec((m, k), n, 32, False, act="int8")
    isa = resolve_isa("auto")
    plan = A8.plan_for(spec, isa)
    out = [("w4a8", A8.int4_a8_matmul_kernel(spec, plan), A8.pack_a8(*nat, spec, plan))]
    for mr, nv in TILES if tiles else []:
        p = dataclasses.replace(plan, mr=mr, nv=nv)
        kernel = A8.int4_a8_matmul_kernel(spec, p)
        out.append((f"w4a8 {mr}x{nv}", kernel, A8.pack_a8(*nat, spec, p)))
    s4 = dataclasses.replace(spec, act="float32")
    out.append(("w4 x fp32", K4.int4_matmul_kernel(s4), K4.pack_panels(*nat, s4)))
    ms = K8.MatmulSpec(m, k, n, "int8", per_row=True, fused_quant=True)
    p8 = K8.matmul_plan(ms, isa)
    w8 = K8.pack_matmul_weight(rng.integers(-127, 128, (k, n)).astype(np.int8), p8)
    zeros = [np.zeros(p8.n_pad, d) for d in (np.int32, np.float32, np.float32)]
    ep = K8.Epilogue("float32", dynamic=True)
    kernel = K8.matmul_kernel(ms, p8, (m, k), 0, ep)
    out.append(("int8 dynamic", kernel, [w8, *zeros, np.zeros((), np.float32)]))
    return out, sum(a.nbytes for a in nat)


def bench_shape(m: int, k: int, n: int, runs: int, bandwidth: float) -> dict[str, Any]:
    import tvm

    from graphopt import _tvm

    target = tvm.target.Target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
    kernels, nbytes = _kernels(m, k, n, tiles=m > 1)
    x = tvm.runtime.tensor(np.random.default_rng(1).standard_normal((m, k)).astype(np.float32))
    out = tvm.runtime.tensor(np.zeros((m, n), np.float32))
    row: dict[str, Any] = {"shape": [m, k, n], "int4_bytes": nbytes, "ms": {}}
    for name, func, consts in kernels:
        lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target)
        args = [x, *(tvm.runtime.tensor(c) for c in consts), out]
        row["ms"][name] = round(_time(lib, args, runs), 4)
    if m == 1:
        row["bound_ms"] = round(nbytes / bandwidth / 1e6, 4)
        row["w4a8_GBps"] = round(nbytes / row["ms"]["w4a8"] / 1e6, 2)
    print(row, flush=True)
    return row


def markdown(doc: dict[str, Any]) -> str:
    from graphopt.tables import format_table

    rows = []
    for r in doc["rows"]:
        t = r["ms"]
        tiles = {n: v for n, v in t.items() if n.startswith("w4a8 ")}
        best = min(tiles, key=tiles.get) if tiles else None
        rows.append(
            ["x".join(map(str, r["shape"])), t["w4a8"], t["w4 x fp32"], t["int8 dynamic"]]
            + [f"{best[5:]}: {tiles[best]}" if best else "-"]
            + [r.get("bound_ms", "-"), r.get("w4a8_GBps", "-")]
        )
    cols = ["M x K x N", "W4A8 ms", "W4 x fp32 ms", "int8 dynamic ms", "best W4A8 tile ms"]
    return (
        f"# int4 kernels\n\n{doc['machine']}; {doc['threads']} threads; copy bandwidth "
        f"{doc['copy_GBps']} GB/s (`python -m bench.bench_int4_kernels`).\n\n"
        + format_table([*cols, "GEMV bound ms", "W4A8 GB/s"], rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    from bench.writing import write_results
    from graphopt.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", default="2")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = args.threads
    bandwidth = copy_bandwidth()
    rows = [bench_shape(m, k, n, args.runs, bandwidth) for m, k, n in SHAPES]
    machine = machine_info().get("cpu", "?")
    doc = {"machine": machine, "threads": args.threads, "copy_GBps": round(bandwidth, 1)}
    doc["rows"] = rows
    text = markdown(doc)
    write_results(args.out, "int4_kernels", doc, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
