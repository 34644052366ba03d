"""Scale producer output channels up and depthwise weights down, as calibration measured.

The int8 flow runs it before `quantize`: calibration writes one scale k per channel for every
(conv + bias [+ relu | relu6]) -> depthwise pair into the ranges file (the method and why:
graphopt/compress/int8/equalize.py). fp32 results are unchanged up to the calibrated maxima; the
depthwise input's small channels then use more of the int8 range.

    before:  y = relu6(conv2d(x, W) + b);        z = conv2d(y, D, groups=C)
    after:   y = relu6(conv2d(x, W * k) + b * k); z = conv2d(y, D / k, groups=C)

Counter: `equalized` (pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from graphopt.compress.int8.equalize import KEY, find_pairs, scaled_module
from graphopt.compress.int8.ranges import ranges_option
from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, PassResult, register_pass


@register_pass
class Equalize(GraphPass):
    """Scale producer output channels up and depthwise weights down (ranges-file scales)."""

    name = "equalize"

    @dataclass(frozen=True)
    class Options:
        ranges: str = ""  # the ranges file with `equalize` entries on depthwise layers

    def run(self, mod: tvm.IRModule) -> PassResult:
        if not self.options.ranges:
            raise PipelineError("equalize needs ranges=FILE (from calibration)")
        ranges = ranges_option(self.options.ranges)
        scales = {}
        for pair in find_pairs(mod):
            k = ranges.get(pair.consumer.name, {}).get(KEY)
            if k is not None:
                k = np.asarray(k, np.float32)
                if k.shape != (pair.producer.weight_shape[0],):
                    raise PipelineError(f"equalize: {pair.consumer.name} scales do not match")
                scales[pair.consumer.name] = k
        if not scales:
            return PassResult(mod, False, {"equalized": 0})
        return PassResult(scaled_module(mod, scales), True, {"equalized": len(scales)})
