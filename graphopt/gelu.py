"""GELU as the CPU targets compute it: x * (0.5 + erf(x / sqrt 2) * 0.5) with erf as Eigen's
rational polynomial on x / sqrt 2 clamped to [-4, 4] (what the `fast-erf` pass legalizes the
graph's erf to), so a kernel that folds GELU into its epilogue (the 16-bit and the
block-sparse matmuls) gives the unfused graph's numbers."""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

ERF_NUM = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
             -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
             -1.60960333262415e-02)  # fmt: skip
ERF_DEN = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
            -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip


def gelu_erf(v, const, clamp):
    """x * (0.5 + erf(x / sqrt 2) * 0.5) with erf as Eigen's rational polynomial (what
    `fast-erf` legalizes the graph's erf to), over numpy arrays or TIR expressions."""
    x = clamp(v * const(0.5**0.5))
    x2 = x * x
    p = const(ERF_NUM[0])
    for c in ERF_NUM[1:]:
        p = x2 * p + const(c)
    q = const(ERF_DEN[0])
    for c in ERF_DEN[1:]:
        q = x2 * q + const(c)
    return v * (const(0.5) + x * p / q * const(0.5))


def tir_gelu(v, lanes: int = 1):
    """TIR: GELU of an fp32 value (or a vector of `lanes`)."""

    def const(c):
        return T.float32(c) if lanes == 1 else T.broadcast(T.float32(c), lanes)

    return gelu_erf(v, const, lambda x: T.max(T.min(x, const(4.0)), const(-4.0)))


def numpy_gelu(y: np.ndarray) -> np.ndarray:
    """numpy: GELU of fp32 values, the same arithmetic."""
    f32 = np.float32
    return gelu_erf(y, f32, lambda x: np.clip(x, f32(-4), f32(4))).astype(np.float32)
