"""An ONNX model without its weights, small enough to carry to a GPU host, and its restoration
with random weights of the same shapes and scale (for timing baselines, never for numbers).

The device check carries graphopt's libraries (which hold the real weights) and compares their
outputs with references computed before the trip; PyTorch and onnxruntime on the GPU host only
need the graph and tensors of the right shapes: the work a dense network does does not depend
on its weights' values. Float initializers above KEEP_ELEMENTS elements become a record of
(dims, dtype, mean, std) in the model's metadata; everything else (shape constants, indices,
small tensors) stays as it is. Needs only onnx and numpy.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

KEEP_ELEMENTS = 4096
META_KEY = "skeleton_weights"
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the large float initializers replaced by their shape and statistics."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    kept, records = [], {}
    for init in out.graph.initializer:
        size = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type not in _FLOATS or size <= KEEP_ELEMENTS:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init).astype(np.float64)
        records[init.name] = {
            "dims": list(init.dims),
            "dtype": int(init.data_type),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "nonneg": bool(values.min() >= 0),  # variances, scales: keep the sign
        }
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    entry = out.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(records)
    return out


def restore(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The stripped initializers back, drawn from a normal of each tensor's mean and std."""
    meta = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in meta:
        return model
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for name, rec in json.loads(meta[META_KEY]).items():
        dtype = onnx.helper.tensor_dtype_to_np_dtype(rec["dtype"])
        values = rng.normal(rec["mean"], rec["std"], rec["dims"])
        values = (np.abs(values) if rec["nonneg"] else values).astype(dtype)
        out.graph.initializer.append(numpy_helper.from_array(values, name))
    return out
