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


def _spread(values, axes: list[int], rank: int, fill: np.ndarray):
    """Values given for `axes` placed in a full-rank vector; other dims take `fill`."""
    hits = np.zeros((len(axes), rank), np.float32)
    hits[np.arange(len(axes)), axes] = 1
    placed = relax.op.sum(
        relax.op.multiply(relax.const(hits), relax.op.reshape(values, [len(axes), 1])), [0]
    )
    untouched = relax.const(fill * (1 - hits.sum(0)).astype(np.float32))
    return relax.op.add(placed, untouched)


def _out_sizes(bb, x_shape, scales, sizes, axes: list[int], policy: str):
    """Output dims as an int64 tensor: floor(dim * scale), or the sizes after the policy."""
    dims = np.asarray(x_shape, np.float32)
    if _present(sizes):
        given = relax.op.astype(sizes, "float32")
        if policy != "stretch":
            ratios = relax.op.divide(given, relax.const(dims[axes]))
            pick = relax.op.min if policy == "not_larger" else relax.op.max
            scale = pick(ratios, [0], keepdims=True)
            given = relax.op.floor(
                relax.op.add(
                    relax.op.multiply(scale, relax.const(dims[axes])), relax.const(np.float32(0.5))
                )
            )
        full = _spread(given, axes, len(dims), dims)
    else:
        scale = _spread(relax.op.astype(scales, "float32"), axes, len(dims), np.ones_like(dims))
        full = relax.op.floor(relax.op.multiply(relax.const(dims), scale))
    return bb.normalize(relax.op.astype(full, "int64"))


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
    rank = len(shape)
    if coord_mode == "tf_crop_and_resize" or rank not in (3, 4, 5):
        return None
    axes = [int(a) % rank for a in attrs.get("axes", range(rank))]
    sizes_t = _out_sizes(bb, shape, scales, sizes, axes, policy)
    out = to_shape(bb, sizes_t, rank, "resized")
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
