"""Symbolic input dims of an artifact: the manifest's ranges and the run-time check.

An artifact compiled with `--input-shape input_ids=1,1..512` lists `"shape": [1, "seq"]` for
its inputs and `"dims": {"seq": {"min": 1, "max": 512}}`; its one library runs any size in
range. Sizes outside a range are the caller's error, caught here: the memory plan is sized
for the upper bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
    """Schema check of `dims`."""
    dims = manifest.get("dims") or {}
    if not isinstance(dims, dict):
        return ["'dims' must be an object"]
    problems = []
    for name, r in dims.items():
        ok = isinstance(r, dict) and all(isinstance(r.get(k), int) for k in ("min", "max"))
        if not ok or r["min"] > r["max"]:
            problems.append(f"dims['{name}'] must be {{'min': int, 'max': int}}, min <= max")
    return problems
