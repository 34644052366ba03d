"""What the portable matmul kernels' specs share (int4 weights, 16-bit weights).

A compression pass leaves a portable kernel per layer with its spec as JSON in a function
attribute; the target's materialize stage reads it back to build its own kernel. The specs
differ in their weight format, not in this: an input x [.., K], an output [.., N], the text
form and the lookup on a kernel."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tvm

Dim = int | str  # a static size, or a symbolic dim by name ("seq")


def tir_shape(shape: tuple[Dim, ...]) -> tuple:
    """A recipe's shape for a kernel's buffers: each named dim becomes one int32 size var
    (the runtime binds it from the tensor's shape), the same var wherever the name repeats."""
    names: dict[str, tvm.tirx.Var] = {}
    return tuple(
        names.setdefault(d, tvm.tirx.Var(d, "int32")) if isinstance(d, str) else d for d in shape
    )


def row_count(shape: tuple) -> int | tvm.tirx.PrimExpr:
    """The rows of a matmul input: the product of its leading dims (int when all are)."""
    rows = 1
    for d in shape[:-1]:
        rows = rows * d
    return rows


class MatmulRecipe:
    """Mixin for frozen dataclasses with fields `x_shape` (the input's shape) and `n`."""

    @property
    def rows(self) -> int:
        """The row count of a static input (kernels with symbolic dims use `row_count`)."""
        return int(np.prod(self.x_shape[:-1], dtype=np.int64))

    @property
    def symbolic(self) -> bool:
        """Whether the row count is symbolic (a dim before the last is named)."""
        return any(isinstance(d, str) for d in self.x_shape[:-1])

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (*self.x_shape[:-1], self.n)

    def text(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def parse(cls, text: str):
        raw = json.loads(text)
        raw["x_shape"] = tuple(raw["x_shape"])
        return cls(**raw)


def recipe_on(func, attr: str, spec_type: type):
    """The spec a kernel carries under `attr`, or None when `func` carries none."""
    attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) else None
    if attrs is None or attr not in attrs:
        return None
    return spec_type.parse(str(attrs[attr]))
