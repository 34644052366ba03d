"""Expand ONNX function operators into their standard bodies before TVM's importer runs.

Many newer ONNX operators (Attention, RotaryEmbedding, RMSNormalization, the losses, Celu,
Swish, the window functions, ...) are defined by the standard as a function of simpler
operators, and onnx ships that body with the schema. Where TVM has no converter, or its
converter is wrong for the case at hand (the opset-23 `Attention`, which TVM's table maps to
onnxruntime's contrib operator; `LayerNormalization` asked for its Mean/InvStdDev outputs;
`RMSNormalization` over axis 0), the node is replaced by that body with onnx's own inliner.
The body is the spec, so the expansion is exact by construction; bodies may use other
function operators (SoftmaxCrossEntropyLoss -> NegativeLogLikelihoodLoss), so it repeats.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx.inliner
from onnx import helper

_DOMAIN = "graphopt.expanded"
_ROUNDS = 4
_STANDARD = ("", "ai.onnx")
# Bodies TVM cannot import either: a Loop over sequences (SequenceMap), a Scan
# (LinearAttention), RandomUniformLike (Bernoulli). Not listed as supported.
_NOT_EXPANDABLE = {"SequenceMap", "LinearAttention", "Bernoulli"}


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _rank(types, name: str) -> int | None:
    t = types.get(name)
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return len(t.tensor_type.shape.dim)


def _layer_norm_stats(node: onnx.NodeProto, types) -> bool:
    """TVM returns only Y; the Mean and InvStdDev outputs come back as scalars."""
    return any(node.output[1:])


def _rms_norm_axis0(node: onnx.NodeProto, types) -> bool:
    """TVM's rms_norm fails to legalize when it normalizes over every axis."""
    rank = _rank(types, node.input[0])
    return rank is not None and _attr(node, "axis", -1) % rank == 0


# Operators TVM's table has but gets wrong in the cases named: expand those nodes only.
BOTCHED: dict[str, Callable[[onnx.NodeProto, dict], bool]] = {
    "Attention": lambda node, types: True,  # TVM's "Attention" is com.microsoft's
    # Not wrong, but its body is one Cast with the type spelled out: the `like` operand, read
    # only for its type, is then no input of the computation (it may be an empty tensor).
    "CastLike": lambda node, types: True,
    "LayerNormalization": _layer_norm_stats,
    "RMSNormalization": _rms_norm_axis0,
}


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    out = {o.domain or "": o.version for o in model.opset_import}
    if "ai.onnx" in out:
        out.setdefault("", out["ai.onnx"])
    return out


def _schema(node: onnx.NodeProto, opsets: dict[str, int]):
    domain = "" if node.domain in _STANDARD else node.domain
    version = opsets.get(domain)
    if version is None:
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return None
    if schema.has_function or schema.has_context_dependent_function:
        return schema
    return None


def function_op_types() -> set[str]:
    """Default-domain operators whose current schema carries a function body."""
    return {
        s.name
        for s in onnx.defs.get_all_schemas()
        if s.domain == ""
        and not s.deprecated
        and s.name not in _NOT_EXPANDABLE
        and (s.has_function or s.has_context_dependent_function)
    }


def _function(node, schema, opsets, types) -> onnx.FunctionProto | None:
    """The body for this node at the model's opset (the newest version not above it)."""
    version = opsets.get("" if node.domain in _STANDARD else node.domain, 0)
    fixed = [v for v in schema.function_opset_versions if v <= version]
    context = [v for v in schema.context_dependent_function_opset_versions if v <= version]
    body = onnx.FunctionProto()
    if context and (not fixed or max(context) >= max(fixed)):
        input_types = [types.get(i, onnx.TypeProto()) for i in node.input]
        if any(not t.HasField("tensor_type") for t in input_types if t is not None):
            return None
        data = schema.get_context_dependent_function_with_opset_version(
            max(context), node.SerializeToString(), [t.SerializeToString() for t in input_types]
        )
    elif fixed:
        data = schema.get_function_with_opset_version(max(fixed))
    else:
        return None
    body.ParseFromString(data)
    return body if body.node and _retarget(body, opsets) else None


def _retarget(body: onnx.FunctionProto, opsets: dict[str, int]) -> bool:
    """Move the body to the model's opset (the inliner needs one version per domain).

    Safe when each operator of the body keeps its inputs and attributes between the two
    versions (later versions mostly add types); onnx's own expanded test models do the same.
    """
    for imp in body.opset_import:
        want = opsets.get(imp.domain or "")
        if want is None or want == imp.version:
            continue
        for n in body.node:
            if (n.domain or "") == (imp.domain or "") and not _same_signature(
                n.op_type, n.domain, imp.version, want
            ):
                return False
        imp.version = want
    return True


def _same_signature(op_type: str, domain: str, old: int, new: int) -> bool:
    """The newer version only adds types, optional inputs or optional attributes."""
    try:
        a, b = (onnx.defs.get_schema(op_type, v, domain) for v in (old, new))
    except onnx.defs.SchemaError:
        return False
    if a.since_version == b.since_version:
        return True
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    names_a, names_b = [i.name for i in a.inputs], [i.name for i in b.inputs]
    extra_inputs = b.inputs[len(names_a) :]
    if names_b[: len(names_a)] != names_a or any(i.option != optional for i in extra_inputs):
        return False
    extra_attrs = set(b.attributes) - set(a.attributes)
    return set(a.attributes) <= set(b.attributes) and not any(
        b.attributes[n].required for n in extra_attrs
    )


def _add_defaults(node: onnx.NodeProto, schema) -> None:
    """Spell out defaulted attributes: a body refers to them by name (Swish's alpha)."""
    present = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in present and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            node.attribute.append(attr.default_value)


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an uninferable model keeps the types it declares
        inferred = model
    g = inferred.graph
    types = {v.name: v.type for v in [*g.input, *g.value_info, *g.output]}
    for t in g.initializer:
        types.setdefault(t.name, helper.make_tensor_type_proto(t.data_type, list(t.dims)))
    return types


class _LazyTypes:
    """Value types from shape inference, run on first use (most models never need it)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.types = model, None

    def get(self, name: str, default=None):
        if self.types is None:
            self.types = _value_types(self.model)
        return self.types.get(name, default)


def _round(model: onnx.ModelProto, supported: set[str]) -> bool:
    """Point each node to expand at a local function holding its body; False if none."""
    opsets, types = _opsets(model), _LazyTypes(model)
    added: dict[bytes, str] = {}
    for node in model.graph.node:
        standard = node.domain in _STANDARD
        botched = standard and node.op_type in BOTCHED
        if standard and node.op_type in supported and not botched:
            continue
        schema = _schema(node, opsets)
        if schema is None:
            continue
        if botched and not BOTCHED[node.op_type](node, types):
            continue
        _add_defaults(node, schema)
        body = _function(node, schema, opsets, types)
        if body is None:
            continue
        key = body.SerializeToString()
        if key not in added:
            added[key] = f"{node.op_type}_{len(added)}"
            body.domain, body.name = _DOMAIN, added[key]
            model.functions.append(body)
        node.domain, node.op_type = _DOMAIN, added[key]
    if not added:
        return False
    model.opset_import.append(helper.make_opsetid(_DOMAIN, 1))
    inlined = onnx.inliner.inline_selected_functions(
        model, [(_DOMAIN, name) for name in added.values()], exclude=False
    )
    model.CopyFrom(inlined)
    _drop_private(model)
    return True


def _drop_private(model: onnx.ModelProto) -> None:
    keep = [f for f in model.functions if f.domain != _DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
    ops = [o for o in model.opset_import if o.domain != _DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(ops)


def expand_functions(model: onnx.ModelProto, supported: set[str]) -> onnx.ModelProto:
    """A copy of `model` with unsupported or botched function operators expanded."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for _ in range(_ROUNDS):
        if not _round(out, supported):
            break
    return out
