"""Model inputs: random ones for verification, and .npz files for `graphopt run`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InputError


class Spec(Protocol):
    name: str
    shape: tuple[int, ...]
    dtype: str


def random_inputs(specs: Sequence[Spec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs: normal floats; integers in {0, 1} (valid ids, masks and indices)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, spec.shape).astype(bool)
        else:
            out[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
    return out


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is not a valid .npz file: {err}") from err


def save_npz(path: str | Path, arrays: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees a half-written outputs file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {err.strerror}") from err
