"""The accuracy-budget search every method shares: how many of the most sensitive units to
keep uncompressed (or less compressed) for a score within `--max-drop` of the original."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ...progress import Meter
from .data import Spec, batch_feeds
from .errors import CalibrationError
from .metrics import Metric, cosines, sqnr_db


def fewest_kept(
    n: int, score: Callable[[int], float], fp32_score: float, max_drop: float
) -> tuple[int, float]:
    """The smallest level k in 1..n (k most sensitive units kept) whose score is within
    `max_drop` of fp32, and that score: a bisection over k (about log2(n) model evaluations
    instead of one per level; level n keeps everything and is fp32 itself, so it needs no
    run). The metric is not strictly monotone in k, so this is the boundary bisection finds,
    not always the global minimum; the artifact check still scores what ships."""
    lo, hi, scores = 0, n, {n: fp32_score}  # lo fails (every unit compressed missed), hi passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        scores[mid] = score(mid)
        if fp32_score - scores[mid] <= max_drop:
            hi = mid
        else:
            lo = mid
    return hi, scores[hi]


def eval_feeds(
    eval_data: str | None,
    inputs: Sequence[Spec],
    calib_feeds: list[dict],
    samples: int | None = None,
) -> tuple[list[dict], np.ndarray | None]:
    """Feeds (and labels) for sensitivity and --max-drop: the `--eval` .npz (x, or one array
    per input, and labels y), else the first `samples` calibration feeds."""
    if not eval_data:
        return calib_feeds[:samples], None
    from ...inputs import load_npz

    data: Mapping[str, np.ndarray] = load_npz(eval_data)
    labels = data.pop("y", None)
    if len(inputs) == 1 and inputs[0].name not in data and "x" in data:
        data = {inputs[0].name: data["x"]}
    feeds = batch_feeds(dict(data), inputs)
    if labels is not None:
        batch = inputs[0].shape[0] if inputs[0].shape else 1
        labels = np.asarray(labels).ravel()[: len(feeds) * batch]
    return feeds, labels


def kept_scorer(run, n: int, ref: list, metric: Metric, budget: float, say, kept="fp32"):
    """score(units kept uncompressed) -> the metric with those units as they were and every
    other compressed, or, once the best score still reachable misses `budget`, that bound
    (scoring stops there). kept: what the progress lines call an uncompressed unit."""

    def score(fp32_units: list[int]) -> float:
        flags = np.ones(n)
        flags[fp32_units] = 0
        got: list[np.ndarray] = []
        for i in range(len(ref)):
            got += run(flags, [i])
            if metric.bound(ref, got) < budget - 1e-9:
                say(f"max-drop: {len(fp32_units)} kept {kept} -> misses after {i + 1} feed(s)")
                return metric.bound(ref, got)
        got_score = metric.score(ref, got)
        say(f"max-drop: {len(fp32_units)} most sensitive unit(s) kept {kept} -> {got_score:.2f}")
        return got_score

    return score


def unit_rows(layers, run, ref_k, which, say, what: str = "sensitivity") -> list[dict]:
    """Each unit alone compressed (every other as it was): its SQNR and mean cosine against
    the original on the chosen feeds, the order --max-drop keeps units uncompressed in."""
    n, rows = len(layers), []
    meter = Meter(n, what, say, unit="layers", every=0.5)
    for i, layer in enumerate(layers):
        flags = np.zeros(n)
        flags[i] = 1
        got = run(flags, which)
        rows.append(
            {
                "layer": layer.name,
                "what": layer.describe(),
                "sqnr_db": round(sqnr_db(np.concatenate(ref_k), np.concatenate(got)), 2),
                "cosine": round(float(cosines(ref_k, got).mean()), 6),
            }
        )
        meter.update(i + 1, f"{layer.name} SQNR {rows[-1]['sqnr_db']} dB")
    return rows


def check_budget_options(opts) -> None:
    """One-line errors for the budget flags every method shares: `opts` has max_drop,
    calibration, eval_data and metric."""
    if opts.metric not in Metric.KINDS:
        raise CalibrationError(f"metric must be one of {', '.join(Metric.KINDS)}")
    if opts.max_drop is not None and opts.max_drop < 0:
        raise CalibrationError("--max-drop must be >= 0")
    if opts.max_drop is not None and not (opts.calibration or opts.eval_data):
        raise CalibrationError("--max-drop needs data: --calibration or --eval")


class FlagGraph:
    """A switchable graph built once: `main(*model inputs, *flags)`, each flag a [1] fp32
    tensor that selects a layer's compressed (1) or original (0) arithmetic. The budget
    searches score any mix of layers on it without rebuilding."""

    def __init__(self, mod, target, flags: int) -> None:
        from tvm import relax

        from ...build import compile_module

        self.params = [p.name for p in mod["main"].params[:-flags]]  # the model's own inputs
        self.vm = relax.VirtualMachine(
            compile_module(mod, target, arg_checks=False), target.device()
        )
        self._flag = {v: _tensor(np.full(1, v, np.float32)) for v in (0.0, 1.0)}

    def flag(self, on: bool):
        return self._flag[float(on)]

    def __call__(self, feed: Mapping[str, np.ndarray], flags: Sequence) -> np.ndarray:
        """The model's first output for `feed` with these flag tensors."""
        from ...artifact import flatten_outputs

        args = [_tensor(np.asarray(feed[p])) for p in self.params]
        out = self.vm["main"](*args, *flags)
        return flatten_outputs([out] if hasattr(out, "numpy") else list(out))[0]


def _tensor(array: np.ndarray):
    import tvm

    return tvm.runtime.tensor(array)
