"""Symbolic input dims in the Relax module: one tir.Var per name, and its bounds on `main`.

TVM's importer shares a symbolic dim between inputs when the shape_dict hands it the same
tir.Var (and ONNX shape inference unifies equal dim_params), so `seq` of input_ids and of
attention_mask is one variable everywhere. The bounds become `tir_var_upper_bound` and
`tir_non_negative_var` on `main`, which Relax's memory planner reads to size buffers
statically instead of allocating at every call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import tvm

from .shapes import TensorSpec

# Names of the input symbols while a model is being converted (converters/shape_ops.py).
INPUT_SYMBOLS: ContextVar[frozenset[str]] = ContextVar(
    "graphopt_input_symbols", default=frozenset()
)


def symbolic_shape_dict(
    inputs: Sequence[TensorSpec], dims: Mapping[str, tuple[int, int]]
) -> dict[str, list]:
    """Input name -> shape for TVM's importer, symbolic dims as shared int64 tir.Vars."""
    symbols = {name: tvm.tirx.Var(name, "int64") for name in dims}
    return {
        s.name: [symbols.get(d, d) if isinstance(d, str) else d for d in s.shape] for s in inputs
    }


@contextmanager
def converting(dims: Mapping[str, tuple[int, int]]):
    """Tell the converters which symbolic dims come from the inputs while importing."""
    token = INPUT_SYMBOLS.set(frozenset(dims))
    try:
        yield
    finally:
        INPUT_SYMBOLS.reset(token)


def with_dim_bounds(mod: tvm.IRModule, dims: Mapping[str, tuple[int, int]]) -> tvm.IRModule:
    """`main` annotated with each symbol's upper bound (memory planning); static: unchanged."""
    if not dims:
        return mod
    main = mod["main"]
    main = main.with_attr("tir_var_upper_bound", {name: hi for name, (_lo, hi) in dims.items()})
    main = main.with_attr("tir_non_negative_var", list(dims))
    mod = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    mod[mod.get_global_var("main")] = main
    return mod


def example_spec(spec: TensorSpec, dims: Mapping[str, tuple[int, int]]) -> TensorSpec:
    """The spec with each symbolic dim at a size inside its range (dims.EXAMPLE_SIZE)."""
    from .dims import SymDim

    shape = tuple(SymDim(d, *dims[d]).example if isinstance(d, str) else d for d in spec.shape)
    return TensorSpec(spec.name, shape, spec.dtype)
