"""Time one runtime on one model in this process (bench_prune runs one per process).

    python -m bench.prune_worker RUNTIME MODEL RUNS WARMUP THREADS [spin|nospin] [FEED.npz]

RUNTIME: graphopt (MODEL an artifact directory), onnxruntime or deepsparse (MODEL an ONNX
file). The input is a fixed random image (1, 3, 224, 224) for the model's first input (these
builds' speed does not depend on the values), or the named arrays of FEED.npz (a sentence).
Prints one JSON line: {"ms": [wall ms per run], "cpu_ms": [process CPU ms per run]}. `spin`
(the default): idle threads spin as deployed (graphopt's bounded spin, the same for
onnxruntime), so the wall clock is what a user sees. `nospin`: they sleep at once, so CPU
time is the work done, which other processes on a shared machine disturb less than the wall
clock, and each parallel kernel pays a worker wake-up (DeepSparse's own threads may still
spin). Imports nothing of graphopt for deepsparse, which runs in its own virtual environment.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.worker import time_calls


def _runner(runtime: str, model: str, threads: int, feed, spinning: bool):
    """A no-argument call of the model; `feed`: an image array for the first input, or a
    dict of named inputs."""
    if runtime == "graphopt":
        import graphopt
        from graphopt import env

        env.configure_for_benchmarks(spinning=spinning)
        art = graphopt.load(model)
        named = feed if isinstance(feed, dict) else {art.manifest["inputs"][0]["name"]: feed}
        return art.runner(named)
    if runtime == "onnxruntime":
        from graphopt import env
        from graphopt.reference import ort_session

        env.configure_for_benchmarks(spinning=spinning)
        session = ort_session(model, threads=threads)
        wanted = {i.name for i in session.get_inputs()}
        if isinstance(feed, dict):
            feeds = {k: v for k, v in feed.items() if k in wanted}
        else:
            feeds = {session.get_inputs()[0].name: feed}
        return lambda: session.run(None, feeds)
    import deepsparse

    engine = deepsparse.compile_model(model, batch_size=1, num_cores=threads)
    return lambda: engine(list(feed.values()) if isinstance(feed, dict) else [feed])


def main(argv: list[str]) -> int:
    runtime, model, runs, warmup, threads = argv[0], argv[1], *map(int, argv[2:5])
    feed = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    if len(argv) > 6:
        feed = dict(np.load(argv[6]))
    spinning = (argv[5] if len(argv) > 5 else "spin") == "spin"
    run = _runner(runtime, model, threads, feed, spinning)
    print(time_calls(run, runs, warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
