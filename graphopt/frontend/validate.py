"""Checks of a model's own consistency before TVM's importer sees it.

TVM's importer and kernels assume valid attributes: a stride of -1, a dilation of 0, a pool
window larger than its input or a zero-size spatial dim become internal errors deep in the
compiler (or, for Expand/Tile/ConstantOfShape to billions of elements, a std::bad_alloc after
allocating gigabytes). These are the model's faults: each is reported as one user error here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx

from ..errors import ModelLoadError

# The most elements any tensor of a model may have (4 GiB of float32), and the largest dim.
MAX_TENSOR_ELEMENTS = 1 << 30
_WINDOWED = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "ConvInteger"}
_POOLS = {"MaxPool", "AveragePool", "LpPool"}


class InvalidModelError(ModelLoadError):
    """The model breaks a rule of the ONNX spec, or asks for an absurdly large tensor."""


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_nodes(sub)


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints) if attr.type == onnx.AttributeProto.INTS else [attr.i]
    return None


def _where(node: onnx.NodeProto) -> str:
    name = node.name or (node.output[0] if node.output else "?")
    return f"{node.op_type} node '{name}'"


def check_structure(model: onnx.ModelProto) -> None:
    """Opset, outputs and window attributes; needs no shapes."""
    newest = onnx.defs.onnx_opset_version()
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > newest:
            raise InvalidModelError(
                f"the model asks for ONNX opset {op.version}; the newest is {newest}"
            )
    if not model.graph.output:
        raise InvalidModelError("the model's graph has no outputs")
    for node in _all_nodes(model.graph):
        if node.op_type in _WINDOWED:
            _check_window_attrs(node)


def _check_window_attrs(node: onnx.NodeProto) -> None:
    rules = {
        "strides": (lambda v: v > 0, "> 0"),
        "dilations": (lambda v: v > 0, "> 0"),
        "kernel_shape": (lambda v: v > 0, "> 0"),
        "pads": (lambda v: v >= 0, ">= 0"),
        "output_padding": (lambda v: v >= 0, ">= 0"),
        "group": (lambda v: v > 0, "> 0"),
    }
    for name, (ok, text) in rules.items():
        values = _ints(node, name)
        if values is not None and not all(ok(v) for v in values):
            raise InvalidModelError(f"{_where(node)}: {name} {values} must all be {text}")


def check_shapes(model: onnx.ModelProto) -> None:
    """Tensor sizes, and windows against the inputs they slide over (static shapes)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - non-strict inference rarely raises; check what we have
        inferred = model
    shapes = _static_shapes(inferred)
    producer = {out: node for node in inferred.graph.node for out in node.output}
    for name, shape in shapes.items():
        count = math.prod(shape)
        if count > MAX_TENSOR_ELEMENTS or any(d > MAX_TENSOR_ELEMENTS for d in shape):
            made_by = f" (made by {_where(producer[name])})" if name in producer else ""
            raise InvalidModelError(
                f"tensor '{name}'{made_by} of shape {shape} is too large: graphopt handles "
                f"at most {MAX_TENSOR_ELEMENTS} elements (and that size of dim) per tensor"
            )
    for node in inferred.graph.node:
        if node.op_type == "ConstantOfShape":
            _check_constant_of_shape(node, inferred)
        if node.op_type in _WINDOWED and node.input and node.input[0] in shapes:
            _check_window_fits(node, shapes)
    weights = {t.name for t in inferred.graph.initializer}
    # An input no node reads carries nothing to compute on (CastLike's `like` after expansion).
    read = {name for node in _all_nodes(inferred.graph) for name in node.input}
    outputs = {v.name for v in inferred.graph.output}
    for value in [*inferred.graph.input, *inferred.graph.output]:
        if value.name not in read and value.name not in outputs:
            continue
        if value.name not in weights and 0 in shapes.get(value.name, [1]):
            raise InvalidModelError(
                f"'{value.name}' has shape {shapes[value.name]}: graphopt does not compile "
                "zero-size inputs or outputs"
            )


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        dims = ttype.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [int(d.dim_value) for d in dims]
    return shapes


def _check_constant_of_shape(node: onnx.NodeProto, model: onnx.ModelProto) -> None:
    init = {t.name: t for t in model.graph.initializer}
    if not node.input or node.input[0] not in init:
        return
    dims = onnx.numpy_helper.to_array(init[node.input[0]]).astype(np.int64).ravel().tolist()
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{_where(node)}: negative dims {dims}")
    if math.prod(dims) > MAX_TENSOR_ELEMENTS:
        raise InvalidModelError(
            f"{_where(node)} would make a tensor of shape {dims}; graphopt handles at most "
            f"{MAX_TENSOR_ELEMENTS} elements per tensor"
        )


def _check_window_fits(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> None:
    """Zero-size spatial dims, and a window larger than the padded input."""
    x = shapes[node.input[0]]
    spatial = x[2:]
    if len(x) < 3:
        return
    if any(d == 0 for d in spatial):
        raise InvalidModelError(f"{_where(node)}: input '{node.input[0]}' {x} has a zero-size dim")
    auto_pad = next((a.s.decode() for a in node.attribute if a.name == "auto_pad"), "NOTSET")
    if node.op_type == "ConvTranspose" or auto_pad not in ("NOTSET", "VALID"):
        return
    kernel = _ints(node, "kernel_shape")
    if kernel is None and len(node.input) > 1 and node.input[1] in shapes:
        kernel = shapes[node.input[1]][2:]
    if not kernel or len(kernel) != len(spatial):
        return
    n = len(spatial)
    pads = _ints(node, "pads") or [0] * (2 * n)
    dilations = _ints(node, "dilations") or [1] * n
    if len(pads) != 2 * n or len(dilations) != n:
        raise InvalidModelError(
            f"{_where(node)}: pads {pads} / dilations {dilations} do not fit {n} spatial dims"
        )
    for axis in range(n):
        window = (kernel[axis] - 1) * dilations[axis] + 1
        padded = spatial[axis] + pads[axis] + pads[axis + n]
        if window > padded:
            raise InvalidModelError(
                f"{_where(node)}: window {window} is larger than its input's spatial dim "
                f"{axis} ({spatial[axis]} + padding {padded - spatial[axis]})"
            )
