"""graphopt/progress.py: the bar, the count against the total, time left; the CLI redraws
progress lines on a terminal and prints them as plain lines otherwise."""

from __future__ import annotations

import io

from graphopt import cli
from graphopt.progress import Meter, ProgressLine, bar, duration


def test_bar_and_duration():
    assert bar(0, 10) == "[" + "-" * 24 + "]   0%"
    assert bar(5, 10) == "[" + "#" * 12 + "-" * 12 + "]  50%"
    assert bar(12, 10).endswith("100%")
    assert (duration(5), duration(80), duration(3725)) == ("5s", "1m20s", "1h02m")


def test_time_left_from_the_rate_and_the_deadline():
    now = [100.0]
    said: list[str] = []
    meter = Meter(1000, "tune", said.append, unit="trials", clock=lambda: now[0])
    now[0] = 180.0  # 80 s for 400 trials: 600 left take 120 s
    meter.update(400, "conv2d best 12.3 us")
    assert said[-1] == (
        "tune [" + "#" * 10 + "-" * 14 + "]  40% 400/1000 trials, conv2d best 12.3 us, "
        "1m20s, ~2m00s left"
    )
    assert isinstance(said[-1], ProgressLine)
    meter.update(400, deadline=210.0)  # the budget ends sooner than the work
    assert said[-1].endswith("~30s left")


def test_updates_are_rate_limited_but_the_last_always_shows():
    now = [0.0]
    said: list[str] = []
    meter = Meter(3, "calibrate", said.append, every=1.0, clock=lambda: now[0])
    meter.update(1)
    meter.update(2)  # same instant: dropped
    meter.update(3)  # done: always shown
    assert [s.split("]")[1].split(",")[0].strip() for s in said] == ["33% 1/3", "100% 3/3"]


def test_cli_redraws_progress_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    cli._REDRAWING["active"] = False
    cli._eprint(ProgressLine("bench [---] 1/3"))
    cli._eprint(ProgressLine("bench [###] 3/3"))
    cli._eprint("done")
    assert err.getvalue() == "\rbench [---] 1/3\033[K\rbench [###] 3/3\033[K\ndone\n"


def test_cli_prints_progress_as_lines_when_piped(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    cli._eprint(ProgressLine("bench [---] 1/3"))
    cli._eprint("done")
    assert err.getvalue() == "bench [---] 1/3\ndone\n"
