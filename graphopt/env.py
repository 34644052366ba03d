"""Every environment variable graphopt reads, declared and typed in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    help: str

    def get(self) -> str:
        return os.environ.get(self.name, self.default)


CACHE_DIR = EnvVar(
    "GRAPHOPT_CACHE_DIR", str(Path.home() / ".cache" / "graphopt"), "models and data caches"
)
DEBUG = EnvVar("GRAPHOPT_DEBUG", "0", "1: show Python tracebacks for user errors too")
NUM_THREADS = EnvVar(
    "GRAPHOPT_NUM_THREADS", "0", "threads for graphopt and onnxruntime in bench (0: all cores)"
)

# TVM's own runtime variables, which graphopt sets (unless the user did) before TVM starts its
# thread pool: TVM 0.27 assumes 2-way SMT on x86 and would use half the cores, and its idle
# workers spin, which slows whatever runs beside them in interleaved benchmarks.
TVM_NUM_THREADS = EnvVar(
    "TVM_NUM_THREADS", "", "TVM runtime threads (default: GRAPHOPT_NUM_THREADS)"
)
TVM_SPIN = EnvVar("TVM_THREAD_POOL_SPIN_COUNT", "", "TVM worker spin; benchmarks set 0")

ALL = (CACHE_DIR, DEBUG, NUM_THREADS, TVM_NUM_THREADS, TVM_SPIN)


def cache_dir() -> Path:
    return Path(CACHE_DIR.get())


def debug() -> bool:
    return DEBUG.get() not in ("", "0", "false")


def num_threads() -> int:
    """Thread count for runtimes; 0 in the variable means every core of this machine."""
    value = int(NUM_THREADS.get() or 0)
    return value if value > 0 else (os.cpu_count() or 1)


def configure_tvm_runtime() -> None:
    """Use every core in TVM's thread pool (set before the pool starts; user values win)."""
    os.environ.setdefault(TVM_NUM_THREADS.name, str(num_threads()))


def configure_for_benchmarks() -> None:
    """No spinning TVM workers: they would steal the cores other runtimes are timed on."""
    configure_tvm_runtime()
    os.environ.setdefault(TVM_SPIN.name, "0")
