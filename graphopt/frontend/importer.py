"""TVM's ONNX importer with graphopt's converters consulted first (frontend/converters/).

A subclass rather than a patch: TVM's code is untouched, and the converters apply only to
models imported through graphopt.
"""

from __future__ import annotations

import onnx
import tvm

from .. import _tvm
from .converters import registry


class GraphoptImporter(_tvm.onnx_importer_class()):
    """Routes each node to a graphopt converter when one applies, else to TVM's table."""

    def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
        known = set(_tvm.onnx_convert_map()) | set(registry()) | {"If", "Constant"}
        missing = {n.op_type for n in graph.node} - known
        if missing:
            raise tvm.error.OpNotImplemented(
                "The following operators are not supported for frontend ONNX: "
                + ", ".join(sorted(missing))
            )

    def _convert_operator(self, op_name, inputs, attrs, opset):
        own = registry().get(op_name)
        if own is not None:
            sym = own(self.bb, op_name, list(inputs), attrs, opset)
            if sym is not None:
                return self.bb.normalize(sym) if isinstance(sym, tvm.relax.Expr) else sym
        return super()._convert_operator(op_name, inputs, attrs, opset)


def from_onnx(model: onnx.ModelProto, shape_dict: dict[str, list]) -> tvm.IRModule:
    """tvm.relax.frontend.onnx.from_onnx for a checked model, with graphopt's converters."""
    opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        1,
    )
    importer = GraphoptImporter(shape_dict, "float32")
    return importer.from_onnx(model.graph, opset)
