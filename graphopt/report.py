"""The side-by-side report: size, FLOPs, latency and accuracy of an artifact vs onnxruntime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact
from .errors import InputError
from .inputs import load_npz, random_inputs
from .instrument import max_relative_error
from .progress import Meter
from .reference import check_same_interface, ort_run, ort_session
from .sizes import WeightSizes, library_weights
from .tables import format_table
from .timing import Timing, interleaved


@dataclass
class Comparison:
    """Numbers behind the report; `to_json` is what bench/ stores."""

    model_bytes: int
    library_bytes: int
    flops: int
    timings: dict[str, Timing]
    max_rel_error: float
    eval_samples: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    top1_agreement: float | None = None
    weights: WeightSizes | None = None  # the library's tensor constants (graphopt.sizes)

    @property
    def ratio(self) -> float:
        return self.timings["graphopt"].median_ms / self.timings["onnxruntime"].median_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "model_bytes": self.model_bytes,
            "library_bytes": self.library_bytes,
            "flops": self.flops,
            "latency": {k: t.to_json() for k, t in self.timings.items()},
            "latency_ratio_graphopt_over_onnxruntime": round(self.ratio, 4),
            "max_rel_error": self.max_rel_error,
            "eval_samples": self.eval_samples,
            "accuracy": self.accuracy,
            "top1_agreement": self.top1_agreement,
            "weights": self.weights.to_json() if self.weights else None,
        }

    def table(self) -> str:
        ort_t, go_t = self.timings["onnxruntime"], self.timings["graphopt"]
        rows = [
            [
                "size",
                _mib(self.model_bytes) + " (.onnx)",
                _mib(self.library_bytes) + " (.so)",
                f"{self.library_bytes / max(1, self.model_bytes):.2f}x",
            ],
            *([_weights_row(self.weights)] if self.weights else []),
            ["FLOPs", "", f"{self.flops / 1e6:.2f} M", ""],
            [
                "latency (median)",
                f"{ort_t.median_ms:.3f} ms",
                f"{go_t.median_ms:.3f} ms",
                f"{self.ratio:.2f}x",
            ],
            [
                "latency (p10-p90)",
                f"{ort_t.p10_ms:.3f}-{ort_t.p90_ms:.3f} ms",
                f"{go_t.p10_ms:.3f}-{go_t.p90_ms:.3f} ms",
                "",
            ],
            ["max error vs onnxruntime", "", f"{self.max_rel_error:.2e}", "(relative to scale)"],
        ]
        if self.accuracy:
            rows.append(
                [
                    f"accuracy ({self.eval_samples} labelled)",
                    f"{100 * self.accuracy['onnxruntime']:.2f}%",
                    f"{100 * self.accuracy['graphopt']:.2f}%",
                    f"{100 * (self.accuracy['graphopt'] - self.accuracy['onnxruntime']):+.2f} pt",
                ]
            )
        if self.top1_agreement is not None:
            rows.append(["top-1 agreement", "", f"{100 * self.top1_agreement:.2f}%", ""])
        return format_table(["", "onnxruntime", "graphopt", "graphopt / ort"], rows)


def _weights_row(w: WeightSizes) -> list[str]:
    dtypes = ", ".join(f"{d} {_mib(b)}" for d, b in w.by_dtype().items())
    share = f"{w.weight_bytes / max(1, w.library_bytes):.0%} of .so"
    return ["weights (constants)", "", f"{_mib(w.weight_bytes)} ({dtypes or 'none'})", share]


def _mib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def compare(
    artifact: Artifact,
    onnx_path: str | Path,
    *,
    eval_npz: str | Path | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    runs: int = 100,
    warmup: int = 10,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Run artifact and onnxruntime side by side: numbers, accuracy, interleaved latency."""
    say = progress or (lambda _m: None)
    session = ort_session(onnx_path)
    feeds = inputs or random_inputs(artifact.inputs, sizes=artifact.example_sizes())
    check_same_interface(session, feeds)
    got = artifact.run(feeds)
    try:
        ref = ort_run(session, feeds)
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types
        raise InputError(f"onnxruntime rejected the inputs: {str(err).splitlines()[-1]}") from err
    err = max_relative_error(
        [ref[o.name] for o in artifact.outputs], [got[o.name] for o in artifact.outputs]
    )
    result = Comparison(
        model_bytes=Path(onnx_path).stat().st_size,
        library_bytes=artifact.library_path.stat().st_size,
        flops=int(artifact.manifest.get("report", {}).get("flops", 0)),
        timings={},
        max_rel_error=err,
        weights=library_weights(artifact.library_path),
    )
    if eval_npz is not None:
        _evaluate(result, artifact, session, load_npz(eval_npz), say)
    contestants = {
        "onnxruntime": lambda: ort_run(session, feeds),
        "graphopt": artifact.runner(feeds),
    }
    meter = Meter(runs, "bench", say, unit="rounds", every=0.5)
    result.timings = interleaved(
        contestants,
        runs=runs,
        warmup=warmup,
        progress=lambda i, n: meter.update(i),
        settle=1,  # each timed run follows its own runtime: see timing.interleaved
    )
    return result


def _evaluate(result: Comparison, artifact: Artifact, session: Any, data: dict, say) -> None:
    """Top-1 agreement with onnxruntime on an .npz of samples (axis 0): `x`, or an array named
    as the model's first input (what `compile --eval` takes); with labels `y`, both runtimes'
    accuracy too."""
    name, out = artifact.inputs[0].name, artifact.outputs[0].name
    x = data.get("x", data.get(name))
    if x is None:
        raise InputError(
            f"evaluation .npz needs the samples as 'x' or '{name}' (and labels 'y' for accuracy)"
        )
    y = data.get("y")
    correct = {"onnxruntime": 0, "graphopt": 0}
    agree = 0
    for i in range(len(x)):
        feed = {name: x[i : i + 1]}
        ref = int(np.argmax(ort_run(session, feed)[out]))
        got = int(np.argmax(artifact.run(feed)[out]))
        if y is not None:
            correct["onnxruntime"] += ref == int(y[i])
            correct["graphopt"] += got == int(y[i])
        agree += ref == got
        if (i + 1) % max(1, len(x) // 5) == 0:
            say(f"eval: {i + 1}/{len(x)} samples")
    result.eval_samples = len(x)
    if y is not None:
        result.accuracy = {k: v / len(x) for k, v in correct.items()}
    result.top1_agreement = agree / len(x)
