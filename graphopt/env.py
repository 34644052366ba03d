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

SPIN_US = EnvVar(
    "GRAPHOPT_SPIN_US",
    "200",
    "microseconds idle runtime threads keep spinning after parallel work (0: sleep at once)",
)

# TVM's own runtime variables, which graphopt sets (unless the user did) before TVM starts its
# thread pool: TVM 0.27 assumes 2-way SMT on x86 and would use half the cores, and its idle
# workers spin ~130 ms after every parallel kernel (a core burnt after each inference, and
# stolen from whatever runs beside it), while not spinning at all costs a worker wake-up per
# kernel (~20 us here). graphopt bounds the spin instead (GRAPHOPT_SPIN_US).
TVM_NUM_THREADS = EnvVar(
    "TVM_NUM_THREADS", "", "TVM runtime threads (default: GRAPHOPT_NUM_THREADS)"
)
TVM_SPIN = EnvVar(
    "TVM_THREAD_POOL_SPIN_COUNT",
    "",
    "TVM worker spin in sched_yield calls (default: GRAPHOPT_SPIN_US)",
)

ALL = (CACHE_DIR, DEBUG, NUM_THREADS, SPIN_US, TVM_NUM_THREADS, TVM_SPIN)

# The spin count the user gave TVM, if any (graphopt sets the variable itself otherwise).
_USER_TVM_SPIN = os.environ.get(TVM_SPIN.name)

# The runtime variables as the user set them (None: unset), before graphopt configured this
# process: a benchmark starts its timing workers from these, not from its own settings.
_USER_RUNTIME = {v.name: os.environ.get(v.name) for v in (SPIN_US, TVM_NUM_THREADS, TVM_SPIN)}


def cache_dir() -> Path:
    return Path(CACHE_DIR.get())


def debug() -> bool:
    return DEBUG.get() not in ("", "0", "false")


def num_threads() -> int:
    """Thread count for runtimes; 0 in the variable means every core of this machine."""
    value = int(NUM_THREADS.get() or 0)
    return value if value > 0 else (os.cpu_count() or 1)


def spin_us() -> int:
    """How long idle runtime threads spin (µs); onnxruntime gets the same in benchmarks.

    A TVM_THREAD_POOL_SPIN_COUNT=0 of the user's means no spinning for onnxruntime either.
    """
    if _USER_TVM_SPIN == "0":
        return 0
    return max(0, int(SPIN_US.get() or 0))


# TVM counts its spin in sched_yield calls, not in time: one costs about 0.4 us on an otherwise
# idle core (the 2-vCPU dev VM; about 1 us on small ARM boards). Timing it at start-up would
# read a whole time slice per call on a busy machine and spin almost nothing later; under load
# each call gives the core away, so a spin counted this way never lasts longer in time.
SCHED_YIELD_US = 0.4


def tvm_spin_count(microseconds: int) -> int:
    """TVM_THREAD_POOL_SPIN_COUNT that spins about `microseconds` on an idle core."""
    return 0 if microseconds <= 0 else max(1, round(microseconds / SCHED_YIELD_US))


def configure_tvm_runtime() -> None:
    """Every core in TVM's thread pool and a spin bounded by GRAPHOPT_SPIN_US (set before the
    pool starts; values the user set win)."""
    os.environ.setdefault(TVM_NUM_THREADS.name, str(num_threads()))
    if _USER_TVM_SPIN is None:
        os.environ[TVM_SPIN.name] = str(tvm_spin_count(spin_us()))


def user_environment() -> dict[str, str]:
    """os.environ with graphopt's runtime variables as the user had set them. A benchmark
    that stops spinning in its own process (`configure_for_benchmarks(spinning=False)`) passes
    this to the workers it times as deployed: they would otherwise inherit a spin of 0 and
    take it for the user's choice."""
    out = dict(os.environ)
    for name, value in _USER_RUNTIME.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def configure_for_benchmarks(spinning: bool = True) -> None:
    """Runtimes as deployed: graphopt's and onnxruntime's idle threads spin the same bounded
    time (GRAPHOPT_SPIN_US; `graphopt.reference.ort_session` reads it), short enough not to
    steal the next contestant's cores for long. `spinning=False` (kernel-level benchmarks,
    whose runs are shorter than any spin, and CPU-time measurements) stops both spinning."""
    if not spinning:
        os.environ[SPIN_US.name] = "0"
    configure_tvm_runtime()
