"""`vcvtneps2bf16` (targets/cpu/precision/cvt_bf16.py): the bf16 bit patterns the 16-bit kernels
store on a CPU with AVX512_BF16 equal the numpy model, which differs from the portable rounding
only in reading denormal inputs as zero."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from graphopt import _tvm
from graphopt.precision_ops import to_bits
from graphopt.targets.cpu.precision.cvt_bf16 import CVT_IR, bf16_bits, reference_bits

needs_bf16 = pytest.mark.skipif(
    "avx512bf16" not in _tvm.host_cpu_features(), reason="this host has no AVX512_BF16"
)
TARGET = {"kind": "llvm", "mcpu": "znver4"}


def _special_values() -> np.ndarray:
    u = np.array(
        [0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x3F808000, 0x3F818000, 0x7F7FFFFF,
         0x7F800000, 0xFF800000, 0x7FC00001, 0xFF800001, 0x00000000, 0x80000000, 0x3F800001,
         0x477FE000, 0xC0490FDB],
        np.uint32,
    )  # fmt: skip
    rest = np.random.default_rng(0).standard_normal(48).astype(np.float32) * 100
    return np.concatenate([u.view(np.float32), rest])


def _kernel(lanes: int):
    n = 64

    @T.prim_func
    def main(x: T.Buffer((n,), "float32"), out: T.Buffer((n,), "uint16")):
        T.func_attr({"tirx.noalias": True})
        with T.attr(0, "pragma_import_llvm", CVT_IR):
            for i in range(n // lanes):
                if lanes == 1:
                    out[i] = bf16_bits(x[i], 1)
                else:
                    out[T.ramp(i * lanes, 1, lanes)] = bf16_bits(
                        x[T.ramp(i * lanes, 1, lanes)], lanes
                    )

    return main


@needs_bf16
@pytest.mark.parametrize("lanes", [16, 1], ids=["instruction", "scalar_tail"])
def test_conversion_equals_numpy(lanes):
    x = _special_values()
    lib = tvm.tirx.build(tvm.IRModule({"main": _kernel(lanes)}), _tvm.make_target(TARGET))
    out = tvm.runtime.tensor(np.zeros(64, np.uint16))
    lib["main"](tvm.runtime.tensor(x), out)
    want = reference_bits(x)
    np.testing.assert_array_equal(out.numpy(), want)
    # against the portable rounding: only the denormal inputs differ (they become zero)
    tiny = (np.abs(x) < np.float32(2.0**-126)) & (x != 0)
    assert np.array_equal(want[~tiny], to_bits(x, "bf16")[~tiny])
    assert np.array_equal(want[tiny], np.where(np.signbit(x[tiny]), 0x8000, 0).astype(np.uint16))
