"""graphopt.timing.interleaved: every contestant timed the same number of times, in turns."""

from __future__ import annotations

from graphopt.timing import interleaved


def test_settle_runs_make_each_timed_run_follow_its_own_runtime():
    calls: list[str] = []
    timed: list[tuple[str, str]] = []  # (contestant, the call right before it)

    def contestant(name):
        def run():
            calls.append(name)

        return run

    names = ["ort", "untuned", "tuned"]
    result = interleaved({n: contestant(n) for n in names}, runs=6, warmup=0, settle=1)
    assert all(len(result[n].samples_ms) == 6 for n in names)
    # Turns are settle + timed: the timed call is every second call, right after its own.
    for i in range(1, len(calls), 2):
        timed.append((calls[i], calls[i - 1]))
    assert all(a == b for a, b in timed) and len(timed) == 18
    # Without settle runs, the order decides who follows whom (A B C C B A ...): C never
    # follows A, B follows both.
    calls.clear()
    interleaved({n: contestant(n) for n in names}, runs=6, warmup=0)
    followers = {(calls[i - 1], calls[i]) for i in range(1, len(calls))}
    assert ("ort", "tuned") not in followers and ("ort", "untuned") in followers
