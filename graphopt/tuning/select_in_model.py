"""Which tuning records a build applies, judged in the model: kernels timed in model order.

MetaSchedule, and the default-vs-tuned check in `tune.select_records`, time a kernel alone:
many calls in a row, its weights and input hot in cache. In the model each kernel runs once,
right after the kernel that wrote its input, and the two can disagree: MobileNetV2's
conv2d18 record measured 31 vs 38 us alone but 39 vs 25 us in the model, and the records
applied on isolated wins made the tuned build 2% slower than the untuned one.

So when the target runs on this machine, `graphopt tune` builds the model twice, with every
record and with none, calls both builds' kernels in model order (the calls the VM makes),
alternating builds round by round, and keeps a kernel's record only where its median time
in the model beats the default schedule's by MIN_GAIN, in the build with every record and
again in the build with only the winners.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Alternating rounds of both builds: a MobileNetV2 round of both is ~5 ms.
ROUNDS = 200
# A record must save this share of its kernel's time in the model: two builds of the same
# kernel read up to ~1% apart.
MIN_GAIN = 0.02

KernelCall = tuple[str, Any, list]  # (kernel name, function, arguments of one run)


def kernel_calls(artifact: Any, feed: Mapping[str, Any]) -> list[KernelCall]:
    """The kernels `main` calls on `feed`, in order, with the arguments of that run (the
    tensors stay alive, so the calls can be repeated without the VM)."""
    vm = artifact._machine()
    calls: list[KernelCall] = []

    def record(func, name, before, _ret, *args):
        if before and not name.startswith("vm.builtin"):
            calls.append((name, func, list(args)))
        return 0  # 0: go on running the instruction

    vm.set_instrument(record)
    artifact.runner(feed)()
    return calls


def kernel_name(call_name: str) -> str:
    """The task a kernel came from: the schedule stage adds `_prepacked` to kernels whose
    weight it packs at compile time."""
    return call_name.removesuffix("_prepacked")


def time_in_sequence(builds: Sequence[list[KernelCall]], rounds: int = ROUNDS) -> list[dict]:
    """Microseconds per kernel name in each build: the median of each call over `rounds`
    runs of the whole sequence (builds alternating, order reversed every round), summed over
    the calls of that kernel."""
    samples = [[[] for _ in calls] for calls in builds]
    clock = time.perf_counter
    for r in range(rounds):
        order = range(len(builds)) if r % 2 == 0 else reversed(range(len(builds)))
        for b in order:
            for i, (_name, func, args) in enumerate(builds[b]):
                start = clock()
                func(*args)
                samples[b][i].append(clock() - start)
    totals = []
    for calls, per_call in zip(builds, samples):
        per_kernel: dict[str, float] = {}
        for (name, _f, _a), seconds in zip(calls, per_call):
            key = kernel_name(name)
            per_kernel[key] = per_kernel.get(key, 0.0) + 1e6 * statistics.median(seconds)
        totals.append(per_kernel)
    return totals


def choose(tuned_us: Mapping[str, float], default_us: Mapping[str, float], names) -> dict:
    """selection.json entries: a record is applied where the model runs its kernel faster."""
    selection = {}
    for name in names:
        t, d = tuned_us.get(name), default_us.get(name)
        keep = t is not None and d is not None and t < d * (1 - MIN_GAIN)
        selection[name] = {
            "tuned_us": None if t is None else round(t, 1),
            "default_us": None if d is None else round(d, 1),
            "applied": keep,
            "measured": "in the model",
        }
    return selection


def select_in_model(
    model: Any,
    db_root: Path,
    opts: Any,
    write_applied: Callable[[Sequence[str]], None],
    names: Sequence[str],
    say: Callable[[str], None] = print,
) -> dict:
    """The records of `names` that make the model faster; leaves them applied
    (`write_applied(chosen)`) and returns selection.json's entries.

    Round 1 builds the model with every record; its winners are then built on their own and
    timed again (a kernel's time depends on its neighbours: the winners of round 1 ran beside
    records that round 2 drops), and only records that win both rounds stay.
    """
    from ..compiler import compile_model
    from ..inputs import random_inputs

    selection: dict = {}
    chosen = list(names)
    if not chosen:
        write_applied(chosen)
        return selection
    with tempfile.TemporaryDirectory(prefix="graphopt-select-") as tmp:
        say("tune: building the model without records")
        default = compile_model(
            model, Path(tmp) / "default", dataclasses.replace(opts, tuning_db=None)
        )
        feed = random_inputs(default.inputs)
        baseline = kernel_calls(default, feed)
        for round_ in (1, 2):
            say(f"tune: round {round_}: building the model with {len(chosen)} records")
            write_applied(chosen)
            tuned = compile_model(
                model, Path(tmp) / f"round{round_}", dataclasses.replace(opts, tuning_db=db_root)
            )
            say(
                f"tune: round {round_}: timing both builds' kernels in model order, {ROUNDS} rounds"
            )
            tuned_us, default_us = time_in_sequence([kernel_calls(tuned, feed), baseline])
            selection.update(choose(tuned_us, default_us, chosen))
            won = [n for n in chosen if selection[n]["applied"]]
            done = won == chosen
            chosen = won
            if done or not chosen:
                break
    write_applied(chosen)
    return selection
