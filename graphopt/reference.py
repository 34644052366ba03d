"""onnxruntime as the reference and the baseline: sessions configured the same way everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import env
from .errors import InputError, ModelLoadError


def ort_session(model: str | Path | bytes, threads: int | None = None, optimize: bool = True):
    """An onnxruntime CPU session. `optimize=False` disables graph optimizations (fp32 Conv /
    MatMul of QDQ models stay fp32). It does not make int8 exact on x86 CPUs without VNNI: the
    u8 x s8 kernels of MatMulInteger and QLinearConv saturate there either way; the config entry
    `session.x64quantprecision=1` with graph optimizations on avoids them for constant
    weights."""
    import onnxruntime as ort

    so = session_options(threads, optimize)
    src = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ModelLoadError(f"model file not found: {model}")
    try:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        name = "model" if isinstance(model, bytes) else str(model)
        raise ModelLoadError(f"onnxruntime cannot load {name}: {_last_line(err)}") from err


def session_options(threads: int | None = None, optimize: bool = True):
    """graphopt's onnxruntime settings: all cores, and idle threads that spin as long as
    graphopt's (GRAPHOPT_SPIN_US): onnxruntime's default spin (tens of ms) would steal the cores
    of whatever runs next, graphopt in benchmarks."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or env.num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    spin = env.spin_us()
    if spin > 0:
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(spin))
    else:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def _last_line(err: Exception) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def check_same_interface(session, inputs: Mapping[str, np.ndarray]) -> None:
    """The reference model must take exactly the inputs the artifact takes."""
    names = {i.name for i in session.get_inputs()}
    if names != set(inputs):
        raise InputError(
            f"reference model inputs ({', '.join(sorted(names))}) differ from the artifact's "
            f"({', '.join(sorted(inputs))}): is --vs the model this artifact was compiled from?"
        )


def ort_run(session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs))))
