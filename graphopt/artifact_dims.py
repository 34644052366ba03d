"""Symbolic input dims of an artifact: the manifest's ranges, the run-time check, and which
library runs a given size.

An artifact compiled with `--input-shape input_ids=1,1..512` lists `"shape": [1, "seq"]` for
its inputs and `"dims": {"seq": {"min": 1, "max": 512}}`. Its `model.so` runs any size in range
(generic kernels); `--specialize seq=128` adds `"specialized": [{"dims": {"seq": 128},
"library": "model.seq128.so", "library_sha256": ...}]`, static builds that run those exact
sizes with the static schedules. Sizes outside a range are the caller's error: the VM would
read past buffers planned for the upper bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LIBRARY = "model.so"


def dim_ranges(manifest: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """name -> (min, max) of every symbolic dim (empty for a static artifact)."""
    return {n: (int(r["min"]), int(r["max"])) for n, r in (manifest.get("dims") or {}).items()}


def shape_problems(spec, shape: tuple[int, ...], dims, sizes: dict[str, int]) -> list[str]:
    """What is wrong with `shape` for `spec`; binds each symbolic dim's size into `sizes`
    (the first input that has it sets it, later ones must agree)."""
    want = ", ".join(str(d) for d in spec.shape)
    if len(shape) != len(spec.shape):
        return [f"input '{spec.name}' has shape {list(shape)}, expected [{want}]"]
    problems = []
    for axis, (have, dim) in enumerate(zip(shape, spec.shape)):
        if not isinstance(dim, str):
            if have != dim:
                return [f"input '{spec.name}' has shape {list(shape)}, expected [{want}]"]
            continue
        lo, hi = dims.get(dim, (0, 0))
        if not lo <= have <= hi:
            problems.append(
                f"input '{spec.name}' dim {axis} ({dim}) is {have}, outside the range "
                f"{lo}..{hi} it was compiled for"
            )
        elif sizes.setdefault(dim, have) != have:
            problems.append(
                f"input '{spec.name}' dim {axis} ({dim}) is {have}, but another input "
                f"has {dim}={sizes[dim]}"
            )
    return problems


def specialized(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(manifest.get("specialized") or [])


def library_for(manifest: Mapping[str, Any], sizes: Mapping[str, int]) -> str:
    """The library that runs these sizes: a specialized one when it matches them exactly."""
    for entry in specialized(manifest):
        if sizes and dict(entry["dims"]) == dict(sizes):
            return str(entry["library"])
    return str(manifest.get("library", LIBRARY))


def spec_dims_problem(shape: list, dims: Mapping[str, Any], output: bool) -> str | None:
    """Schema check of a spec's shape: ints >= 0, or (inputs) names listed in `dims`, or
    (outputs) any symbolic expression text."""
    for d in shape:
        if isinstance(d, str):
            if not output and d not in dims:
                return f"symbolic dim {d!r} has no range in 'dims'"
        elif not isinstance(d, int) or isinstance(d, bool) or d < -1 or (d < 0 and not output):
            return "'shape' must be a list of non-negative integers or dim names"
    return None


def dims_problems(manifest: Mapping[str, Any]) -> list[str]:
    """Schema check of `dims` and `specialized`."""
    dims = manifest.get("dims") or {}
    if not isinstance(dims, dict):
        return ["'dims' must be an object"]
    problems = []
    for name, r in dims.items():
        ok = isinstance(r, dict) and all(isinstance(r.get(k), int) for k in ("min", "max"))
        if not ok or r["min"] > r["max"]:
            problems.append(f"dims['{name}'] must be {{'min': int, 'max': int}}, min <= max")
    for i, entry in enumerate(specialized(manifest)):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("library"), str)
            and isinstance(entry.get("library_sha256"), str)
            and isinstance(entry.get("dims"), dict)
        ):
            problems.append(f"specialized[{i}] needs 'dims', 'library' and 'library_sha256'")
    return problems
