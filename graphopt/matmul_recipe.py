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


class MatmulRecipe:
    """Mixin for frozen dataclasses with fields `x_shape` (the input's shape) and `n`."""

    @property
    def rows(self) -> int:
        return int(np.prod(self.x_shape[:-1], dtype=np.int64))

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
