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

ALL = (CACHE_DIR, DEBUG, NUM_THREADS)


def cache_dir() -> Path:
    return Path(CACHE_DIR.get())


def debug() -> bool:
    return DEBUG.get() not in ("", "0", "false")


def num_threads() -> int:
    """Thread count for runtimes; 0 in the variable means every core of this machine."""
    value = int(NUM_THREADS.get() or 0)
    return value if value > 0 else (os.cpu_count() or 1)
