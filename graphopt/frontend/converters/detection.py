"""Detection operators: refuse what TVM's converter would get silently wrong.

TVM's `NonMaxSuppression` converter reads `max_output_boxes_per_class`, `iou_threshold` and
`score_threshold` only when they are constants; given run-time inputs it goes on with 0 boxes
and an IoU of 0.5, a wrong answer without an error. Constant limits stay on TVM's path.
"""

from __future__ import annotations

from . import converter
from ._util import is_const

LIMITS = ("max_output_boxes_per_class", "iou_threshold", "score_threshold")


@converter("NonMaxSuppression")
def non_max_suppression(bb, op, inputs, attrs, opset):
    runtime = [name for name, x in zip(LIMITS, inputs[2:5]) if x is not None and not is_const(x)]
    if runtime:
        raise NotImplementedError(
            f"NonMaxSuppression with a run-time {', '.join(runtime)} (only constants are "
            "supported: make them initializers)"
        )
    return None
