"""Which ONNX operators graphopt can import; one error that names every unsupported node."""

from __future__ import annotations

import onnx

from .. import _tvm
from ..errors import UnsupportedOperatorError

# Handled by the importer outside its converter table.
_BUILTIN = {"Constant", "If"}
_STANDARD_DOMAINS = {"", "ai.onnx"}
# Operators of other domains with a converter of graphopt's own (frontend/converters/).
CONTRIB_OPS = {("com.microsoft", "MatMulNBits")}


def converted_op_types() -> set[str]:
    """Operators with a converter: TVM's table, graphopt's ONNX rewrites and Relax converters."""
    from .converters import registry
    from .quantized import REWRITTEN  # rewritten at the ONNX level before TVM's importer

    contrib = {op for _domain, op in CONTRIB_OPS}  # converted, but not default-domain ops
    return set(_tvm.onnx_convert_map()) | _BUILTIN | REWRITTEN | (set(registry()) - contrib)


def expanded_op_types() -> set[str]:
    """Default-domain operators without a converter that import through their function body."""
    from .expand import function_op_types

    return function_op_types() - converted_op_types()


def own_converter_types() -> tuple[set[str], set[str]]:
    """graphopt's Relax converters: (operators TVM lacks, operators whose TVM converter they
    extend to run-time operands)."""
    from .converters import registry

    own, theirs = set(registry()), set(_tvm.onnx_convert_map())
    return own - theirs, own & theirs


def supported_op_types() -> set[str]:
    return converted_op_types() | expanded_op_types()


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def check_supported(model: onnx.ModelProto) -> None:
    """Raise UnsupportedOperatorError listing each unsupported op type with its node names.

    Runs after the function expansion, so what is left needs a converter of its own.
    """
    supported = converted_op_types()
    local_functions = {(f.domain, f.name) for f in model.functions}
    missing: dict[str, list[str]] = {}
    for i, node in enumerate(_all_nodes(model.graph)):
        if (node.domain, node.op_type) in local_functions:
            continue
        ok = node.domain in _STANDARD_DOMAINS and node.op_type in supported
        ok = ok or (node.domain, node.op_type) in CONTRIB_OPS
        if not ok:
            key = (
                node.op_type
                if node.domain in _STANDARD_DOMAINS
                else f"{node.domain}.{node.op_type}"
            )
            missing.setdefault(key, []).append(node.name or f"<node #{i}>")
    if missing:
        parts = []
        for op, names in sorted(missing.items()):
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} nodes)" if len(names) > 8 else "")
            parts.append(f"{op} [{shown}]")
        raise UnsupportedOperatorError(
            f"{len(missing)} unsupported operator type(s): " + "; ".join(parts)
        )
