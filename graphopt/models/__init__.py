"""Bundled default model: a small CNN trained on scikit-learn's handwritten digits.

It exists so graphopt has a real, labelled model to optimise out of the box: an optimisation
run can then show that accuracy is preserved, not only that the graph got faster. Regenerate
both files with ``python -m graphopt.models.train_digits`` (the only place torch is needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent

DEFAULT_MODEL: Path = _HERE / "digits_cnn.onnx"
"""ONNX model: input ``input`` float32 [1, 1, 8, 8] in [0, 1], output ``logits`` [1, 10]."""

DEFAULT_EVAL: Path = _HERE / "digits_eval.npz"
"""Held-out split the model never saw in training: ``x`` float32 [N, 1, 8, 8], ``y`` int64 [N]."""

__all__ = ["DEFAULT_EVAL", "DEFAULT_MODEL", "load_eval"]


def load_eval() -> tuple[np.ndarray, np.ndarray]:
    """Return the held-out images ``x`` (float32 [N, 1, 8, 8]) and labels ``y`` (int64 [N])."""
    with np.load(DEFAULT_EVAL) as data:
        return data["x"], data["y"]
