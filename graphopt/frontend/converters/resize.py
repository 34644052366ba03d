"""Resize whose `scales` or `sizes` is a run-time input.

TVM's converter needs them constant. Here the output size is computed at run time
(floor(dim * scale), or the sizes given) and becomes a symbolic shape for the same Relax and
TOPI resize kernels TVM's converter uses. The kernels derive the coordinate scale from the
input and output sizes, as TVM's constant path does; a `scales` entry whose product with the
dim is not an integer (0.6 x 4) maps coordinates slightly differently from ONNX's rule.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, topi

from . import converter
from ._util import is_const, static_shape, to_shape


def _present(expr) -> bool:
    """An input that is given and not the empty placeholder tensor."""
    if expr is None:
        return False
    shape = static_shape(expr)
    return not (shape is not None and shape == [0])


def _out_sizes(bb, x_shape, scales, sizes):
    if _present(sizes):
        return bb.normalize(relax.op.astype(sizes, "int64"))
    dims = relax.const(np.asarray(x_shape, np.float32))
    scaled = relax.op.multiply(dims, relax.op.astype(scales, "float32"))
    return bb.normalize(relax.op.astype(relax.op.floor(scaled), "int64"))


@converter("Resize")
def resize_runtime_sizes(bb, op, inputs, attrs, opset):
    x = inputs[0]
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    given = [t for t in (scales, sizes) if _present(t)]
    shape = static_shape(x)
    if opset < 11 or len(given) != 1 or is_const(given[0]) or shape is None:
        return None
    coord_mode = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
    policy = attrs.get("keep_aspect_ratio_policy", b"stretch").decode()
    if coord_mode == "tf_crop_and_resize" or "axes" in attrs or policy != "stretch":
        return None
    if len(shape) not in (3, 4, 5):
        return None
    rank = len(shape)
    out = to_shape(bb, _out_sizes(bb, shape, scales, sizes), rank, "resized")
    mode = attrs.get("mode", b"nearest").decode()
    kwargs = dict(
        coordinate_transformation_mode=coord_mode,
        rounding_method=attrs.get("nearest_mode", b"round_prefer_floor").decode(),
        cubic_alpha=attrs.get("cubic_coeff_a", -0.75),
        cubic_exclude=attrs.get("exclude_outside", 0),
        extrapolation_value=attrs.get("extrapolation_value", 0.0),
    )
    method = "nearest_neighbor" if mode == "nearest" else mode
    spatial = list(out.values[2:])
    roi = [0.0] * (2 * (rank - 2))
    if rank == 3:
        return bb.emit_te(topi.image.resize1d, x, roi, spatial, "NCW", method, *kwargs.values())
    resize = relax.op.image.resize2d if rank == 4 else relax.op.image.resize3d
    layout = "NCHW" if rank == 4 else "NCDHW"
    return resize(x, size=relax.ShapeExpr(spatial), roi=roi, layout=layout, method=method, **kwargs)
