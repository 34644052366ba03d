"""The weights file between `--prune` and the `prune` pass: an .npz of each pruned layer's
weight in its stored layout, keyed by layer name, so the method's choices (SparseGPT's updated
weights, per-layer levels) reach the pass as data."""

from __future__ import annotations

import numpy as np


def save_pruned(path, weights: dict[str, np.ndarray]) -> None:
    np.savez(path, **{name: np.asarray(w, np.float32) for name, w in weights.items()})


def load_pruned(path) -> dict[str, np.ndarray]:
    """{layer: weight} from a file of `save_pruned`; {} for no path."""
    if not path:
        return {}
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
