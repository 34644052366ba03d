"""What every one-runtime-per-process timing worker prints: wall and CPU milliseconds of
`runs` calls after untimed warm-up ones, as one JSON line for the parent to read."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

# A fresh process on these VMs runs its first few hundred milliseconds slow, whatever the
# runtime: MobileNetV2 took 2.8-4.3 ms a call in its first 50 calls and 1.8 ms from the
# 150th on (graphopt; onnxruntime 4.7-4.8 then 3.8 ms). Ten warm-up calls left most of the
# 60 timed ones in that phase, which shrank every ratio measured across processes.
WARMUP_S = 1.0


def time_calls(run: Callable[[], object], runs: int, warmup: int) -> str:
    """The JSON line {"ms": [...], "cpu_ms": [...]} of `runs` timed calls of `run`, after at
    least `warmup` untimed calls and WARMUP_S seconds of them."""
    start, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - start < WARMUP_S:
        run()
        done += 1
    ms, cpu_ms = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        run()
        ms.append((time.perf_counter() - start) * 1000.0)
        cpu_ms.append((time.process_time() - cpu) * 1000.0)
    return json.dumps({"ms": ms, "cpu_ms": cpu_ms})
