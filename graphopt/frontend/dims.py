"""Symbolic input dimensions: `--input-shape input_ids=1,1..512` or `x=batch:1..8,3,224,224`.

A dim of an input shape is an int (static) or a `SymDim`: a name and an inclusive range. Dims
that share a name are one symbol (input_ids and attention_mask share `seq`), so the compiled
module knows they are equal. An anonymous range takes the model's own `dim_param` name at that
position, else `<input>_<axis>`. Every symbol needs a range: its upper bound sizes the memory
plan and the run-time check (graphopt.artifact) rejects inputs outside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InputError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The size a symbolic dim takes where one concrete input is needed (verify-each, report).
EXAMPLE_SIZE = 16


@dataclass(frozen=True)
class SymDim:
    """A symbolic dimension; `lo`/`hi` None until a range is given for its name."""

    name: str | None
    lo: int | None = None
    hi: int | None = None

    @property
    def example(self) -> int:
        """A concrete size inside the range (EXAMPLE_SIZE, clamped)."""
        return max(self.lo or 1, min(self.hi or EXAMPLE_SIZE, EXAMPLE_SIZE))

    def __str__(self) -> str:
        rng = f"{self.lo}..{self.hi}" if self.lo is not None else ""
        return f"{self.name}:{rng}" if self.name and rng else (self.name or rng)


Dim = int | SymDim


def parse_dim(token: str, text: str) -> Dim:
    """`8`, `1..512`, `seq` or `seq:1..512` (text is the whole argument, for messages)."""
    token = token.strip()
    name, _, rng = token.rpartition(":") if ":" in token else ("", "", token)
    if not name and _NAME.match(rng):
        return SymDim(rng)
    if ".." not in rng:
        if name:
            raise InputError(f"--input-shape '{text}': '{token}' is not NAME:MIN..MAX")
        try:
            value = int(rng)
        except ValueError as err:
            raise InputError(
                f"--input-shape '{text}': dims must be integers, ranges MIN..MAX or names"
            ) from err
        if value < 0:
            raise InputError(f"--input-shape '{text}': dims must be >= 0")
        return value
    if name and not _NAME.match(name):
        raise InputError(f"--input-shape '{text}': '{name}' is not a valid dimension name")
    lo_text, _, hi_text = rng.partition("..")
    try:
        lo, hi = int(lo_text), int(hi_text)
    except ValueError as err:
        raise InputError(f"--input-shape '{text}': range '{rng}' is not MIN..MAX") from err
    if lo < 1 or hi < lo:
        raise InputError(f"--input-shape '{text}': range {lo}..{hi} needs 1 <= MIN <= MAX")
    return SymDim(name or None, lo, hi)


def name_dims(
    inputs: Mapping[str, list[Dim]], model_names: Mapping[str, list[str | None]]
) -> dict[str, list[Dim]]:
    """Give every anonymous range a name: the model's dim_param there, else `<input>_<axis>`."""
    named = {}
    for inp, dims in inputs.items():
        out: list[Dim] = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, SymDim) and dim.name is None:
                own = model_names.get(inp, [])
                param = own[axis] if axis < len(own) else None
                dim = SymDim(param if param and _NAME.match(param) else _safe(inp, axis), *_b(dim))
            out.append(dim)
        named[inp] = out
    return named


def _b(dim: SymDim) -> tuple[int | None, int | None]:
    return dim.lo, dim.hi


def _safe(inp: str, axis: int) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", inp)
    return f"{base if _NAME.match(base) else 'in_' + base}_{axis}"


def resolve_ranges(inputs: Mapping[str, Sequence[Dim]]) -> dict[str, tuple[int, int]]:
    """name -> (lo, hi), one range per name; a name without one, or with two, is an error."""
    ranges: dict[str, tuple[int, int]] = {}
    names: set[str] = set()
    for dims in inputs.values():
        for dim in dims:
            if not isinstance(dim, SymDim):
                continue
            names.add(dim.name)
            if dim.lo is None:
                continue
            seen = ranges.setdefault(dim.name, (dim.lo, dim.hi))
            if seen != (dim.lo, dim.hi):
                raise InputError(
                    f"--input-shape: dimension '{dim.name}' has two ranges, "
                    f"{seen[0]}..{seen[1]} and {dim.lo}..{dim.hi}"
                )
    missing = sorted(names - set(ranges))
    if missing:
        raise InputError(
            f"symbolic dimension(s) {', '.join(missing)} need a range "
            f"(e.g. --input-shape NAME=1,{missing[0]}:1..512)"
        )
    return ranges
