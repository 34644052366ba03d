"""Model inputs: random ones for verification, and .npz files for `graphopt run`."""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InputError


class Spec(Protocol):
    name: str
    shape: tuple[int | str, ...]  # a str: a symbolic dim's name
    dtype: str


# The size of a symbolic dim in random inputs when no size is given for it.
SYMBOLIC_SIZE = 16


def random_inputs(
    specs: Sequence[Spec], seed: int = 0, sizes: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Deterministic inputs: normal floats; integers in {0, 1} (valid ids, masks and indices).
    A symbolic dim takes its size from `sizes`, else SYMBOLIC_SIZE."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        shape = tuple(
            (sizes or {}).get(d, SYMBOLIC_SIZE) if isinstance(d, str) else d for d in spec.shape
        )
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return out


# The most an inputs file may hold once decompressed (checked from the array headers).
MAX_INPUT_BYTES = 4 << 30


@dataclass(frozen=True)
class _Header:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def load_npz(path: str | Path, specs: Sequence[Spec] | None = None) -> dict[str, np.ndarray]:
    """Arrays of an .npz (or one .npy) file, each checked from its header before it is read.

    With `specs` (the model's inputs), names, shapes and dtypes must match before anything is
    decompressed; without, the total size is capped. Corrupt, truncated, empty or oversized
    files are InputErrors, never tracebacks or gigabytes of decompressed data.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs file not found (or not a regular file): {path}")
    try:
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                return _load_npy(path, specs)
        with zipfile.ZipFile(path) as archive:
            members = {m[:-4]: m for m in archive.namelist() if m.endswith(".npy")}
            if not members:
                raise InputError(f"{path} holds no arrays")
            headers = [_read_header(archive, n, m) for n, m in members.items()]
            _check_headers(path, headers, specs)
            return {n: _read_array(archive, m) for n, m in members.items()}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"{path} is not a valid .npz file: {_reason(err)}") from err


def _load_npy(path: Path, specs: Sequence[Spec] | None) -> dict[str, np.ndarray]:
    """A single .npy feeds a model with a single input."""
    if specs is not None and len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise InputError(f"{path} is one array; the model has inputs {names}: use an .npz")
    name = specs[0].name if specs else "x"
    with open(path, "rb") as f:
        header = _parse_header(f, name)
        _check_headers(path, [header], specs)
        f.seek(0)
        return {name: np.lib.format.read_array(f, allow_pickle=False)}


def _read_header(archive: zipfile.ZipFile, name: str, member: str) -> _Header:
    with archive.open(member) as f:
        return _parse_header(f, name)


def _parse_header(f, name: str) -> _Header:
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"array {name!r}: unknown .npy version {version}")
    read = np.lib.format.read_array_header_1_0
    if version != (1, 0):  # 3.0 differs from 2.0 only in allowing utf-8 field names
        read = np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:
        raise ValueError(f"array {name!r} holds Python objects")
    return _Header(name, tuple(int(d) for d in shape), dtype)


def _check_headers(path: Path, headers: Sequence[_Header], specs: Sequence[Spec] | None) -> None:
    total = sum(math.prod(h.shape) * h.dtype.itemsize for h in headers)
    if specs is None:
        if total > MAX_INPUT_BYTES:
            raise InputError(
                f"{path} would hold {total / 2**30:.1f} GiB of arrays "
                f"(limit {MAX_INPUT_BYTES >> 30} GiB)"
            )
        return
    want = {s.name: s for s in specs}
    problems = [f"unknown input '{h.name}'" for h in headers if h.name not in want]
    problems += [f"missing input '{n}'" for n in want if n not in {h.name for h in headers}]
    for h in headers:
        spec = want.get(h.name)
        if spec is not None and h.dtype != np.dtype(spec.dtype):
            problems.append(f"input '{h.name}' has dtype {h.dtype}, expected {spec.dtype}")
        if spec is not None and not _shape_fits(h.shape, spec.shape):
            want = ", ".join(str(d) for d in spec.shape)
            problems.append(f"input '{h.name}' has shape {list(h.shape)}, expected [{want}]")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))


def _shape_fits(shape: tuple[int, ...], spec: Sequence[int | str]) -> bool:
    """Rank and static dims; a symbolic dim's range is the artifact's check (artifact_dims)."""
    return len(shape) == len(spec) and all(
        isinstance(d, str) or h == d for h, d in zip(shape, spec)
    )


def _read_array(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    with archive.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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
