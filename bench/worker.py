"""What every one-runtime-per-process timing worker prints: wall and CPU milliseconds of
`runs` calls after `warmup` untimed ones, as one JSON line for the parent to read."""

from __future__ import annotations

import json
import time
from collections.abc import Callable


def time_calls(run: Callable[[], object], runs: int, warmup: int) -> str:
    """The JSON line {"ms": [...], "cpu_ms": [...]} of `runs` timed calls of `run`."""
    for _ in range(warmup):
        run()
    ms, cpu_ms = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        run()
        ms.append((time.perf_counter() - start) * 1000.0)
        cpu_ms.append((time.process_time() - cpu) * 1000.0)
    return json.dumps({"ms": ms, "cpu_ms": cpu_ms})
