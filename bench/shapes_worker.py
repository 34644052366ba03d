"""Time one runtime on one model at one size in this process (bench_shapes runs one per process).

    python -m bench.shapes_worker RUNTIME MODEL KIND SIZE RUNS WARMUP

RUNTIME: graphopt (MODEL an artifact directory) or onnxruntime (MODEL an ONNX file). KIND:
text (input_ids and attention_mask of SIZE tokens), image (a batch of SIZE 224x224 images) or
image_hw (one SIZE x SIZE image).
The inputs are fixed random values: the speed of these builds does not depend on them. Prints
one JSON line: {"ms": [wall ms per run], "cpu_ms": [process CPU ms per run]}.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.worker import time_calls


def feeds(kind: str, size: int) -> dict[str, np.ndarray]:
    """The inputs of `kind` at `size` (tokens for text, images for image, pixels a side for
    image_hw)."""
    rng = np.random.default_rng(size)
    if kind == "text":
        ids = rng.integers(1000, 20000, (1, size)).astype(np.int64)
        ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
        return {"input_ids": ids, "attention_mask": np.ones((1, size), np.int64)}
    if kind == "image_hw":
        return {"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
    return {"input": rng.standard_normal((size, 3, 224, 224)).astype(np.float32)}


def _runner(runtime: str, model: str, feed: dict[str, np.ndarray]):
    from graphopt import env

    env.configure_for_benchmarks()
    if runtime == "graphopt":
        import graphopt

        return graphopt.load(model).runner(feed)
    from graphopt.reference import ort_session

    session = ort_session(model)
    return lambda: session.run(None, feed)


def main(argv: list[str]) -> int:
    runtime, model, kind = argv[:3]
    size, runs, warmup = map(int, argv[3:6])
    run = _runner(runtime, model, feeds(kind, size))
    print(time_calls(run, runs, warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
