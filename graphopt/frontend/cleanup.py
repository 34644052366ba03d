"""ONNX-level clean-up before conversion: what TVM's importer needs from real exports.

Real PyTorch exports compute shapes at run time (Shape -> Gather -> Concat -> Reshape, computed
Pad amounts, ConstantOfShape). TVM's importer rejects many of these ("Dynamic pads are not
supported yet"). With static input shapes, shape inference plus onnxscript's optimizer folds
those sub-graphs into constants, and the importer sees a static graph.
"""

from __future__ import annotations

import numpy as np
import onnx

_FOLD_SIZE_LIMIT = 1 << 20  # elements: never materialize huge folded tensors


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation (so Shape-derived values become known)."""
    return onnx.shape_inference.infer_shapes(
        model, check_type=False, strict_mode=False, data_prop=True
    )


def fold_shape_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold shape arithmetic and other constant sub-graphs with onnxscript.

    Only folding and dead-node removal: onnxscript's rewrite rules (conv+batch-norm fusion and
    the like) are left out on purpose, so graph optimizations stay graphopt's own passes.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import _constant_folding

    model_ir = ir.serde.deserialize_model(model)
    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=_FOLD_SIZE_LIMIT,
                    output_size_limit=_FOLD_SIZE_LIMIT,
                    should_fold=_small_constant_of_shape,
                ),
                common.RemoveUnusedNodesPass(),
            ],
            steps=3,
            early_stop=True,
        ),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
    )(model_ir)
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
    """Shape inference, folding, and shape inference again for the importer's benefit."""
    model = infer_shapes(model)
    model = normalize_constants(fold_shape_subgraphs(model))
    return infer_shapes(model)
