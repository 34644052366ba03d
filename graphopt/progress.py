"""Progress of long work (tuning, calibration, sensitivity, benchmarks) as a bar with the
count against its total, a note (best latency so far, rate) and the time left.

    meter = Meter(1000, "tune", say, unit="trials")
    meter.update(380, "conv2d_3 best 12.3 us")
    # tune [#########---------------]  38% 380/1000 trials, conv2d_3 best 12.3 us, 1m20s,
    #   ~2m10s left

`update` hands the text to `say` as a `ProgressLine`: the CLI redraws one terminal line for
those (carriage return) and prints every other message on a line of its own; piped to a file,
each update is a plain line, at most one per `every` seconds so logs stay short.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WIDTH = 24


class ProgressLine(str):
    """A message that replaces the previous progress line on a terminal."""


def bar(done: float, total: float, width: int = WIDTH) -> str:
    frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    full = int(round(frac * width))
    return "[" + "#" * full + "-" * (width - full) + f"] {100 * frac:3.0f}%"


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Meter:
    """Counts work done against a total and reports it through `say` (see module doc)."""

    def __init__(
        self,
        total: float,
        what: str,
        say: Callable[[str], None],
        unit: str = "",
        every: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total, self.what, self.say, self.unit = total, what, say, unit
        self.every, self.clock = every, clock
        self.start = clock()
        self.last = -float("inf")

    def text(self, done: float, note: str = "", deadline: float | None = None) -> str:
        """The progress line; time left from the rate so far, or the deadline if sooner."""
        elapsed = self.clock() - self.start
        count = f"{done:g}/{self.total:g}" + (f" {self.unit}" if self.unit else "")
        parts = [f"{self.what} {bar(done, self.total)} {count}"]
        if note:
            parts.append(note)
        parts.append(duration(elapsed))
        left = None
        if 0 < done < self.total:
            left = elapsed * (self.total - done) / done
        if deadline is not None:
            budget_left = max(0.0, deadline - self.clock())
            left = budget_left if left is None else min(left, budget_left)
        if left is not None:
            parts.append(f"~{duration(left)} left")
        return ", ".join(parts)

    def update(self, done: float, note: str = "", deadline: float | None = None) -> None:
        now = self.clock()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        self.say(ProgressLine(self.text(done, note, deadline)))
