"""What every one-runtime-per-process timing worker prints: wall and CPU milliseconds of
`runs` calls after untimed warm-up ones, as one JSON line for the parent to read; `serve`
answers such requests again and again from one long-lived process (`bench/pool.py`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

# A fresh process on these VMs runs its first few hundred milliseconds slow, whatever the
# runtime: MobileNetV2 took 2.8-4.3 ms a call in its first 50 calls and 1.8 ms from the
# 150th on (graphopt; onnxruntime 4.7-4.8 then 3.8 ms). Ten warm-up calls left most of the
# 60 timed ones in that phase, which shrank every ratio measured across processes.
WARMUP_S = 1.0


def time_calls(
    run: Callable[[], object], runs: int, warmup: int, warmup_s: float = WARMUP_S
) -> str:
    """The JSON line {"ms": [...], "cpu_ms": [...]} of `runs` timed calls of `run`, after at
    least `warmup` untimed calls and `warmup_s` seconds of them."""
    start, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - start < warmup_s:
        run()
        done += 1
    ms, cpu_ms = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        run()
        ms.append((time.perf_counter() - start) * 1000.0)
        cpu_ms.append((time.process_time() - cpu) * 1000.0)
    return json.dumps({"ms": ms, "cpu_ms": cpu_ms})


# Untimed calls before each slot of a served worker: its threads and vCPUs have idled
# while the other contestants ran.
SLOT_WARMUP = 3


def serve(run: Callable[[], object], stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout):
    """A long-lived timing worker: warm up once (WARMUP_S), print `ready`, then answer each
    line `N` of stdin with time_calls' JSON line for N calls (after SLOT_WARMUP untimed
    ones); end at EOF. The parent interleaves such slots of every contestant (bench/pool.py)."""
    time_calls(run, 0, warmup=SLOT_WARMUP)
    print("ready", file=stdout, flush=True)
    for line in stdin:
        if line.strip():
            print(time_calls(run, int(line), SLOT_WARMUP, warmup_s=0.0), file=stdout, flush=True)
