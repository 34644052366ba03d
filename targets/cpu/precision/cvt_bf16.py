"""fp32 -> bf16 bit patterns with AVX512_BF16's `vcvtneps2bf16`: one instruction for 16 values
where the portable rounding (`precision_ops.tir_bits`) takes about eight.

The instruction rounds to nearest even and quiets NaN as `to_bits` does, but reads a denormal
fp32 input as zero (keeping its sign). A kernel that stores its output as bf16 bit patterns
(`out_bits`) on a CPU with AVX512_BF16 uses it, so such an output is `to_bits(flush(y))`
(`reference_bits`): the same numbers except that results below 2^-126 in magnitude become
zero, as the `vdpbf16ps` kernel's own sums already do. Reached, like `vdpbf16ps`, through an
LLVM IR function imported into the kernel (`pragma_import_llvm`; TVM 0.27 cannot hold a
bfloat16 vector), which LLVM inlines to the one instruction.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from graphopt.precision_ops import to_bits

CVT = "graphopt_cvtneps2bf16"
CVT_IR = f"""
declare <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float>)
define <16 x i16> @{CVT}(<16 x float> %v) {{
  %r = call <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float> %v)
  %b = bitcast <16 x bfloat> %r to <16 x i16>
  ret <16 x i16> %b
}}
"""
LANES = 16
_TINY = 2.0**-126  # the smallest normal fp32


def bf16_bits(v, lanes: int = LANES):
    """TIR: the bf16 bit patterns (uint16) of fp32 `v` as the instruction makes them: a vector
    of 16 by the instruction, anything else by the portable rounding of the flushed value."""
    if lanes == LANES:
        return T.call_pure_extern(f"uint16x{LANES}", CVT, v)
    from graphopt.precision_ops import tir_bits

    f32, u32 = ("float32", "uint32") if lanes == 1 else (f"float32x{lanes}", f"uint32x{lanes}")

    def c(x, make=T.float32):
        return make(x) if lanes == 1 else T.broadcast(make(x), lanes)

    u = T.reinterpret(u32, v)
    sign = T.bitwise_and(u, c(0x80000000, T.uint32))  # a denormal -> the zero of its sign
    flushed = T.reinterpret(f32, T.Select(T.fabs(v) < c(_TINY), sign, u))
    return tir_bits(flushed, "bf16", lanes)


def reference_bits(y) -> np.ndarray:
    """numpy model: bf16 bit patterns of y with denormal inputs read as zero (sign kept)."""
    y = np.asarray(y, np.float32)
    tiny = np.abs(y) < np.float32(_TINY)
    return to_bits(np.where(tiny, np.copysign(np.float32(0), y), y), "bf16")
