"""Zero-size inputs become constants: an empty tensor has exactly one value, so its shape says
everything it carries.

The common case is an operand that configures an operator rather than carrying data: the
empty `axes` of ReduceSum (every axis, or none with `noop_with_empty_axes`), the empty `pads`
or `splits` of other operators. As a graph input it is a run-time operand TVM's importer cannot
read; as the constant it must be, the importer sees the attribute it is. The input stays in the
model's signature (callers feed it as before, and `run` still checks its shape); no node reads
it any more, so nothing downstream meets a zero-size tensor because of it.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from .shapes import graph_inputs

EMPTY_SUFFIX = "::empty"


def fold_empty_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every static zero-size graph input read through an empty initializer."""
    empty = {}
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if (
            dims
            and all(d.HasField("dim_value") for d in dims)
            and any(d.dim_value == 0 for d in dims)
        ):
            empty[value.name] = value
    if not empty:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, value in empty.items():
        elem = value.type.tensor_type.elem_type
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        array = numpy_helper.to_array(helper.make_tensor("t", elem, shape, []))
        out.graph.initializer.append(numpy_helper.from_array(array, name + EMPTY_SUFFIX))
    _rename_uses(out.graph, {n: n + EMPTY_SUFFIX for n in empty})
    return out


def _rename_uses(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every node input (subgraphs included) at the renamed tensors."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in _GRAPH_TYPES else []:
                _rename_uses(sub, renames)


_GRAPH_TYPES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
