"""graphopt's own Relax converters, consulted before TVM's converter table.

TVM's ONNX importer rejects inputs that ONNX allows at run time (a reduction's `axes`, a
`Resize`'s sizes, a `Reshape`'s shape, ...), and has no converter for some operators. Each
family module registers converters here with `@converter("OpType", ...)`; a converter returns
a Relax expression, or None to leave the node to TVM's own converter (the common, constant
case stays on TVM's path). The importer subclass in `graphopt/frontend/importer.py` calls them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tvm import relax

# fn(bb, op_type, inputs, attrs, opset) -> relax.Expr | None
Converter = Callable[[relax.BlockBuilder, str, list, dict, int], "relax.Expr | None"]
_REGISTRY: dict[str, Converter] = {}
_FAMILIES = (
    "detection",
    "elementwise",
    "int4",
    "pad",
    "reduce",
    "resize",
    "rnn",
    "shape_ops",
    "spectral",
)
_loaded = False


def converter(*op_types: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op in op_types:
            _REGISTRY[op] = fn
        return fn

    return register


def registry() -> dict[str, Converter]:
    """op type -> converter, every family module loaded."""
    global _loaded
    if not _loaded:
        for family in _FAMILIES:
            importlib.import_module(f"{__name__}.{family}")
        _loaded = True
    return _REGISTRY
