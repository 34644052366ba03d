"""ONNX-level clean-up before conversion: what TVM's importer needs from real exports.

Real PyTorch exports compute shapes at run time (Shape -> Gather -> Concat -> Reshape, Pad
amounts from ConstantOfShape chains, scalar ConstantOfShape in attention masks). TVM's importer
rejects many of these ("Dynamic pads are not supported yet" on EfficientNet-Lite0, a
broadcast_to rank error on MiniLM). With input shapes pinned first (frontend/shapes.py),
onnxscript's constant folder turns those sub-graphs into constants. Findings per model:
bench/models/FINDINGS.md.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import onnx

_FOLD_SIZE_LIMIT = 1 << 20  # elements: never materialize huge folded tensors
_FOLD_ROUNDS = 3  # one round folds everything on real exports; later rounds are cheap no-ops
# onnx's reference evaluator fails on some nodes (GatherElements in BERT) and the folder logs
# "Evaluation failed" as a warning; the node simply stays unfolded and TVM runs it.
_FOLD_LOGGER = logging.getLogger("onnxscript.optimizer._constant_folding")


@contextmanager
def _quiet_folder():
    level = _FOLD_LOGGER.level
    _FOLD_LOGGER.setLevel(logging.ERROR)
    try:
        yield
    finally:
        _FOLD_LOGGER.setLevel(level)


def fold_shape_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold shape arithmetic and other constant sub-graphs with onnxscript.

    Only folding and dead-node removal: onnxscript's rewrite rules (conv+batch-norm fusion and
    the like) are left out on purpose, so graph optimizations stay graphopt's own passes.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants_ir

    model_ir = ir.serde.deserialize_model(onnx.ModelProto.FromString(model.SerializeToString()))
    common.InlinePass()(model_ir)
    with _quiet_folder():
        for _ in range(_FOLD_ROUNDS):
            result = fold_constants_ir(
                model_ir,
                onnx_shape_inference=True,
                input_size_limit=_FOLD_SIZE_LIMIT,
                output_size_limit=_FOLD_SIZE_LIMIT,
                should_fold=_small_constant_of_shape,
            )
            common.RemoveUnusedNodesPass()(model_ir)
            if not result.modified:
                break
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model_ir)
    return ir.serde.serialize_model(model_ir)


def _small_constant_of_shape(node) -> bool | None:
    """Fold ConstantOfShape (onnxscript skips it by default) when its output is small.

    PyTorch computes Pad amounts from ConstantOfShape; TVM's importer needs them constant.
    """
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return None
    shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return None
    return int(np.prod(shape.numpy())) <= _FOLD_SIZE_LIMIT


_CONSTANT_ATTRS = {
    "value_int": (onnx.TensorProto.INT64, False),
    "value_ints": (onnx.TensorProto.INT64, True),
    "value_float": (onnx.TensorProto.FLOAT, False),
    "value_floats": (onnx.TensorProto.FLOAT, True),
}


def normalize_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Constant(value_int[s]/value_float[s]) as Constant(value=tensor).

    Folding can leave a graph output produced by such a node (outputs cannot become
    initializers), and TVM's importer reads only the `value` form.
    """
    for node in model.graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            continue
        attr = node.attribute[0]
        if attr.name not in _CONSTANT_ATTRS:
            continue
        dtype, is_list = _CONSTANT_ATTRS[attr.name]
        values = onnx.helper.get_attribute_value(attr)
        dims = [len(values)] if is_list else []
        tensor = onnx.helper.make_tensor("value", dtype, dims, values if is_list else [values])
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))
    return model


def clean_for_import(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant sub-graphs, then put constants in the form TVM's importer reads."""
    return normalize_constants(fold_shape_subgraphs(model))
