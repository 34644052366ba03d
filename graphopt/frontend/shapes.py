"""Input shapes: --input-shape overrides (sizes, or symbolic ranges: frontend/dims.py), and a
clear error for dynamic dims left without either."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from ..errors import DynamicShapeError, InputError
from .dims import Dim, SymDim, name_dims, parse_dim, resolve_ranges


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a model input or output (as in the manifest); a symbolic
    dim is its name (a str), its range is in the manifest's `dims`."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def parse_shape_arg(text: str) -> tuple[str, tuple[Dim, ...]]:
    """ "name=1,3,224,224" (or "name=1x3x224x224") to ("name", (1, 3, 224, 224)); a dim may
    also be a range "1..512", a name "seq" or both "seq:1..512" (a SymDim)."""
    name, eq, dims = text.rpartition("=")
    if not eq or not name or not dims:
        raise InputError(f"--input-shape '{text}' is not NAME=DIMS (e.g. input=1,3,224,224)")
    tokens = dims.split("x") if set(dims) <= set("0123456789x ") else dims.split(",")
    return name, tuple(parse_dim(d, text) for d in tokens if d.strip())


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not also initializers (old exporters list weights)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    out: list[int | str] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            out.append(d.dim_value)
        else:
            out.append(d.dim_param or "?")
    return out


def make_static(model: onnx.ModelProto, overrides: Mapping[str, Sequence[Dim | str]]):
    """Copy of the model with every input dim fixed or symbolic (a dim_param carrying the
    symbol's name), and the symbols' ranges; errors name each unresolved dim at once."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = graph_inputs(model)
    names = {i.name for i in inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(
            f"--input-shape names unknown input(s) {', '.join(unknown)}; "
            f"model inputs: {', '.join(sorted(names))}"
        )
    given = {i.name: _checked(i, overrides[i.name]) for i in inputs if i.name in overrides}
    model_params = {i.name: [d if isinstance(d, str) else None for d in _dims(i)] for i in inputs}
    given = name_dims(given, model_params)
    symbols = {d.name for dims in given.values() for d in dims if isinstance(d, SymDim)}
    pinned = _pinned_params(given, model_params)
    problems = []
    for inp in inputs:
        if inp.name in given:
            continue
        dims = [SymDim(d) if d in symbols else pinned.get(d, d) for d in _dims(inp)]
        if any(isinstance(d, str) for d in dims):
            problems.append(f"{inp.name} ({_fmt(_dims(inp))})")
        given[inp.name] = dims
    if problems:
        example = problems[0].split(" ")[0]
        raise DynamicShapeError(
            "dynamic input dimensions need --input-shape: "
            + "; ".join(problems)
            + f" (e.g. --input-shape {example}=1,... or a range 1..512)"
        )
    ranges = resolve_ranges(given)
    for inp in inputs:
        for proto_dim, value in zip(inp.type.tensor_type.shape.dim, given[inp.name]):
            proto_dim.Clear()
            if isinstance(value, SymDim):
                proto_dim.dim_param = value.name
            else:
                proto_dim.dim_value = int(value)
    return model, ranges


def _pinned_params(given, model_params) -> dict[str, int]:
    """The model's dim_params that --input-shape set to a size on one input: the same name
    on the other inputs (attention_mask's `seq` after input_ids=1,128) takes that size."""
    pinned = {}
    for inp, dims in given.items():
        for dim, param in zip(dims, model_params.get(inp, [])):
            if param and isinstance(dim, int):
                pinned.setdefault(param, dim)
    return pinned


def _checked(inp: onnx.ValueInfoProto, dims: Sequence[Dim | str]) -> list[Dim]:
    """An override against the model's own input: rank, and its static dims kept."""
    text = f"{inp.name}={_fmt(dims)}"
    shape = [parse_dim(d, text) if isinstance(d, str) else d for d in dims]
    if any(isinstance(d, int) and int(d) < 0 for d in shape):
        raise InputError(f"input shape {text}: dims must be >= 0")
    have = _dims(inp)
    if len(shape) != len(have):
        raise InputError(
            f"--input-shape {inp.name}: model input has rank {len(have)} "
            f"({_fmt(have)}), got {len(shape)} dims"
        )
    for want, own in zip(shape, have):
        if isinstance(own, int) and want != own:
            hint = " (exported with a fixed size: export it with a dynamic axis)"
            raise InputError(
                f"--input-shape {text} conflicts with the model's static shape {_fmt(have)}"
                + (hint if isinstance(want, SymDim) else "")
            )
    return shape


def _fmt(dims: Sequence[int | str]) -> str:
    return ",".join(str(d) for d in dims)


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in graph_inputs(model)]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    elem = value.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "float32"
    shape = tuple(d if isinstance(d, int) else (d if d != "?" else -1) for d in _dims(value))
    return TensorSpec(value.name, shape, dtype)
