"""IEEE division in the graph's own quantize kernels (fp32 -> int8), as on the CPU.

TVM compiles CUDA with `--use_fast_math`, which turns a float `/` into an approximate division
(`div.approx`, about 2 ulp). A quantize kernel rounds `x / scale`: a quotient one ulp off a
rounding boundary lands on the other int8 step than the CPU's, and the int8 layers after it
then see another input. Kernels that write int8 / uint8 and divide floats get `__fdiv_rn`
(division rounded to nearest, whatever the flags) instead; other kernels keep fast math.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

from graphopt.int8_ops import RECIPE_ATTR

INT8_TYPES = ("int8", "uint8")


def _writes_int8(func: tirx.PrimFunc) -> bool:
    """Its last parameter (the output) is an int8 / uint8 buffer."""
    if not func.params:
        return False
    return str(getattr(func.params[-1].ty, "dtype", "")) in INT8_TYPES


def exact_division(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """`func` with its float divisions as `__fdiv_rn`, or None when it is no quantize kernel
    (no int8 output, no float division, or an int8 op kernel)."""
    if not _writes_int8(func) or (func.attrs is not None and RECIPE_ATTR in func.attrs):
        return None
    found: list[bool] = []

    def rewrite(div: tirx.Div):
        if str(div.ty.dtype) != "float32":
            return div
        found.append(True)
        return tirx.call_pure_extern("float32", "__fdiv_rn", div.a, div.b)

    body = tvm_ffi.structural_map(func.body, [(tirx.Div, rewrite)])
    return func.with_body(body) if found else None


def exact_quantize_kernels(mod: tvm.IRModule) -> dict:
    """{GlobalVar: rewritten kernel} for every quantize kernel of `mod`."""
    out = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and (new := exact_division(func)) is not None:
            out[gvar] = new
    return out
