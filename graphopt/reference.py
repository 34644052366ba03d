"""onnxruntime as the reference and the baseline: sessions configured the same way everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import env


def ort_session(model: str | Path | bytes, threads: int | None = None, optimize: bool = True):
    """An onnxruntime CPU session. `optimize=False` disables graph optimizations: onnxruntime's
    fused int8 kernels saturate on AVX2 CPUs without VNNI, so int8 references use it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or env.num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ort_run(session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs))))
