"""Static input shapes: --input-shape overrides, and a clear error for dynamic dims left over."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from ..errors import DynamicShapeError, InputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of a model input or output (as in the manifest)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """ "name=1,3,224,224" (or "name=1x3x224x224") to ("name", (1, 3, 224, 224))."""
    name, eq, dims = text.rpartition("=")
    if not eq or not name or not dims:
        raise InputError(f"--input-shape '{text}' is not NAME=DIMS (e.g. input=1,3,224,224)")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError as err:
        raise InputError(f"--input-shape '{text}': dims must be integers") from err
    if any(d < 0 for d in shape):
        raise InputError(f"--input-shape '{text}': dims must be >= 0")
    return name, shape


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


def make_static(model: onnx.ModelProto, overrides: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """Copy of the model with every input dim fixed; errors name each unresolved dim at once."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = graph_inputs(model)
    names = {i.name for i in inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(
            f"--input-shape names unknown input(s) {', '.join(unknown)}; "
            f"model inputs: {', '.join(sorted(names))}"
        )
    problems = []
    for inp in inputs:
        dims = _dims(inp)
        if inp.name in overrides:
            shape = list(overrides[inp.name])
            if any(int(d) < 0 for d in shape):
                raise InputError(f"input shape {inp.name}={_fmt(shape)}: dims must be >= 0")
            if len(shape) != len(dims):
                raise InputError(
                    f"--input-shape {inp.name}: model input has rank {len(dims)} "
                    f"({_fmt(dims)}), got {len(shape)} dims"
                )
            for want, have in zip(shape, dims):
                if isinstance(have, int) and have != want:
                    raise InputError(
                        f"--input-shape {inp.name}={_fmt(shape)} conflicts with the model's "
                        f"static shape {_fmt(dims)}"
                    )
            dims = shape
        elif any(not isinstance(d, int) for d in dims):
            problems.append(f"{inp.name} ({_fmt(dims)})")
            continue
        shape_proto = inp.type.tensor_type.shape
        for proto_dim, value in zip(shape_proto.dim, dims):
            proto_dim.Clear()
            proto_dim.dim_value = int(value)
    if problems:
        example = problems[0].split(" ")[0]
        raise DynamicShapeError(
            "dynamic input dimensions need --input-shape: "
            + "; ".join(problems)
            + f" (e.g. --input-shape {example}=1,...)"
        )
    return model


def _fmt(dims: Sequence[int | str]) -> str:
    return ",".join(str(d) for d in dims)


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in graph_inputs(model)]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    elem = value.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "float32"
    shape = tuple(d if isinstance(d, int) else -1 for d in _dims(value))
    return TensorSpec(value.name, shape, dtype)
