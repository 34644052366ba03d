"""The 16-bit matmul op that `lower-precision` emits and a target's stage materializes.

    y [.., N] = r(x) [.., K] @ W,  W [K, N] stored as 16-bit (bf16 or fp16) bit patterns

r rounds each activation to the same 16-bit format (round to nearest, ties to even, as the
hardware converts), both operands are widened to fp32 exactly, and products are summed in
fp32. A product of two 16-bit numbers is exact in fp32 (8 + 8 or 11 + 11 significant bits),
so fused or separate multiply-add give the same sums; only the order matters. The order is
the pair order of x86's `vdpbf16ps`: k = 1, 0, 3, 2, ... (odd before even in each pair, K
padded with a zero), so the fp32 fallback kernels and the bf16 dot-product kernel add the same
numbers in the same order. `reference_matmul` is the numpy model of it.

The portable kernel (`portable_kernel`) carries its spec (`RECIPE_ATTR`, JSON) so a target stage
(`materialize-precision` on CPUs) can replace it and repack the weights for its instructions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.matmul_recipe import Dim, MatmulRecipe, recipe_on, row_count, tir_shape

RECIPE_ATTR = "graphopt.precision_kernel"
# Module attribute `lower-precision{attention=true}` sets to the precision the fused attention
# groups should take (a target's `precision-attention` pass reads it after `fuse`).
ATTENTION_ATTR = "graphopt.precision_attention"
PRECISIONS = ("bf16", "fp16")
# op_pattern 8 (opaque): FuseOps never fuses these kernels with their neighbours (their bodies
# are loops, not blocks), and the target stage finds each one whole.
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}


@dataclass(frozen=True)
class PrecisionMatmulSpec(MatmulRecipe):
    x_shape: tuple[Dim, ...]  # x's full shape (symbolic dims by name); rows: all but the last
    n: int
    precision: str  # bf16 | fp16
    layout: str = "natural"  # natural [K, N] | a target's packed layout (e.g. "cpu16")
    # The epilogue `fuse-precision-epilogue` folds in, applied to each fp32 sum in this order:
    # + bias [N] (an operand after the weight), GELU, clamp to [lo, hi], + residual (an
    # operand of the output's shape, last before the output).
    bias: bool = False
    gelu: bool = False
    lo: float = -math.inf
    hi: float = math.inf
    residual: bool = False
    # x arrives already rounded, as 16-bit bit patterns (uint16) of `precision`: its producer
    # stored r(x) (`precision-handoff`), so the kernel widens it instead of rounding it.
    x_bits: bool = False
    # the output stored as r(epilogue(sum)) bit patterns (uint16), for readers that are
    # 16-bit matmuls of the same precision only (`precision-handoff`).
    out_bits: bool = False

    @property
    def k(self) -> int:
        return int(self.x_shape[-1])

    @property
    def k_pairs(self) -> int:
        return -(-self.k // 2)


def spec_of(func) -> PrecisionMatmulSpec | None:
    """The spec of a 16-bit matmul kernel, or None when `func` is none."""
    return recipe_on(func, RECIPE_ATTR, PrecisionMatmulSpec)


# -- numpy conversions (the reference every kernel is tested against) --------------------------


def f32_to_bf16_bits(x) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays NaN (quieted,
    sign kept), Inf stays Inf, overflow rounds to Inf, denormals round like any other value."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (u >> np.uint32(16)) | np.uint32(0x40)
    return np.where(nan, quiet, rounded).astype(np.uint16)


def bf16_bits_to_f32(bits) -> np.ndarray:
    """bf16 bit patterns -> fp32 (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_bits(x, precision: str) -> np.ndarray:
    """fp32 -> 16-bit bit patterns (uint16) of `precision`, round to nearest even."""
    if precision == "bf16":
        return f32_to_bf16_bits(x)
    with np.errstate(over="ignore"):  # overflow rounds to Inf, as the hardware's does
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def from_bits(bits, precision: str) -> np.ndarray:
    """16-bit bit patterns of `precision` -> fp32 (exact)."""
    if precision == "bf16":
        return bf16_bits_to_f32(bits)
    return np.asarray(bits, np.uint16).view(np.float16).astype(np.float32)


def round_to(x, precision: str) -> np.ndarray:
    """x rounded to `precision`, as fp32 (what the kernels compute with)."""
    return from_bits(to_bits(x, precision), precision)


def x_rounded(x, spec: PrecisionMatmulSpec) -> np.ndarray:
    """r(x) as fp32: x rounded, or x's bit patterns widened for an `x_bits` spec."""
    if spec.x_bits:
        return from_bits(x, spec.precision)
    return round_to(np.asarray(x, np.float32), spec.precision)


def pair_order(k: int) -> list[int]:
    """The summation order of the op: 1, 0, 3, 2, ... (a padding index K is skipped)."""
    return [i for j in range(0, k, 2) for i in (j + 1, j) if i < k]


def reference_matmul(x, w_bits, spec: PrecisionMatmulSpec) -> np.ndarray:
    """numpy model of the op: rounded operands, exact products, fp32 sums in pair order
    (x: fp32, or its bit patterns for an `x_bits` spec)."""
    xr = x_rounded(x, spec).reshape(spec.rows, spec.k)
    w = from_bits(w_bits, spec.precision)
    acc = np.zeros((spec.rows, spec.n), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for kk in pair_order(spec.k):
            acc = acc + xr[:, kk : kk + 1] * w[kk]
    return acc.reshape(spec.out_shape)


# -- TIR helpers shared by every kernel of the op ----------------------------------------------


def tir_round(v, precision: str, lanes: int = 1):
    """TIR: fp32 value (or vector) rounded to `precision` and widened back to fp32 (the same
    rounding as `to_bits`)."""
    return tir_widen(tir_bits(v, precision, lanes), precision, lanes)  # widening is exact


def tir_bits(v, precision: str, lanes: int = 1):
    """TIR: fp32 value (or vector) -> its 16-bit bit pattern (uint16) in `precision`, the
    same rounding as `to_bits` (bf16: nearest even, NaN quieted with its sign)."""
    u16 = "uint16" if lanes == 1 else f"uint16x{lanes}"
    if precision == "fp16":
        return T.reinterpret(u16, T.Cast("float16" if lanes == 1 else f"float16x{lanes}", v))
    u32 = "uint32" if lanes == 1 else f"uint32x{lanes}"

    def c(value: int):
        return T.uint32(value) if lanes == 1 else T.broadcast(T.uint32(value), lanes)

    u = T.reinterpret(u32, v)
    odd = T.bitwise_and(T.shift_right(u, c(16)), c(1))
    rounded = T.shift_right(u + c(0x7FFF) + odd, c(16))
    quiet = T.bitwise_or(T.shift_right(u, c(16)), c(0x40))
    return T.Cast(u16, T.Select(T.isnan(v), quiet, rounded))  # one unordered compare


def tir_store_value(v, spec: PrecisionMatmulSpec, lanes: int = 1):
    """TIR: what a kernel stores for the fp32 result `v`: v, or its bits (`out_bits`)."""
    return tir_bits(v, spec.precision, lanes) if spec.out_bits else v


def tir_widen(bits, precision: str, lanes: int = 1):
    """TIR: 16-bit bit patterns (uint16 scalar or vector) -> fp32, exact."""
    f32 = "float32" if lanes == 1 else f"float32x{lanes}"
    if precision == "fp16":
        return T.Cast(f32, T.reinterpret("float16" if lanes == 1 else f"float16x{lanes}", bits))
    u32 = "uint32" if lanes == 1 else f"uint32x{lanes}"
    sixteen = T.uint32(16) if lanes == 1 else T.broadcast(T.uint32(16), lanes)
    return T.reinterpret(f32, T.shift_left(T.Cast(u32, bits), sixteen))


def portable_kernel(spec: PrecisionMatmulSpec) -> tvm.tirx.PrimFunc:
    """The op as plain scalar TIR over the natural [K, N] bits (builds and runs on any target;
    only the row loop is parallel): PrimFunc(x, w, [bias], [residual], out), carrying its
    spec; the epilogue is the spec's (`graphopt.precision_epilogue`)."""
    from graphopt.precision_epilogue import kernel_func, tir_epilogue

    x_shape = tir_shape(spec.x_shape)  # symbolic dims: size vars
    rows, k, n, prec = row_count(x_shape), spec.k, spec.n, spec.precision
    pairs = spec.k_pairs

    @T.macro
    def body(xf, w, bias, rf, of):
        for m in T.parallel(rows):
            acc = T.decl_buffer((1,), "float32", scope="local")
            for j in range(n):
                acc[0] = T.float32(0)
                for pr in range(pairs):
                    for h in range(2):
                        kk = T.meta_var(pr * 2 + 1 - h)
                        if kk < k:
                            xv = T.meta_var(_x_value(xf[m, kk], spec))
                            acc[0] = acc[0] + xv * tir_widen(w[kk, j], prec)
                of[m, j] = tir_store_value(tir_epilogue(acc[0], spec, bias, rf, m, j), spec)

    func = kernel_func(body, spec, x_shape, (k, n), "uint16", _ATTRS)
    return func.with_attr(RECIPE_ATTR, spec.text())


def _x_value(v, spec: PrecisionMatmulSpec):
    """TIR: r(x) of one element of x as fp32 (widened where x holds bit patterns)."""
    return tir_widen(v, spec.precision) if spec.x_bits else tir_round(v, spec.precision)


def te_dims(shape: tuple[Dim, ...]) -> list:
    """A shape for a TE kernel, int64 as Relax's shapes (FuseTIR fuses these kernels with
    legalized ops): static dims as constants, each named dim one int64 size var."""
    names: dict[str, tvm.tirx.Var] = {}
    return [
        names.setdefault(d, tvm.tirx.Var(d, "int64")) if isinstance(d, str) else
        tvm.tirx.IntImm("int64", d) for d in shape
    ]  # fmt: skip


def round_kernel(shape: tuple[Dim, ...], precision: str) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, out): out = r(x), elementwise, as an ordinary block kernel (the --max-drop
    search's switchable graph; schedule rules vectorize it like any elementwise op)."""
    from tvm import te

    dims = te_dims(shape)
    x = te.placeholder(dims, "float32", name="x")
    out = te.compute(dims, lambda *i: tir_round(x(*i), precision), name="round16")
    return te.create_prim_func([x, out]).without_attr("global_symbol")


def bits_kernel(shape: tuple[Dim, ...], precision: str) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, out): out = the 16-bit bit patterns (uint16) of r(x), elementwise, as an
    ordinary block kernel (`precision-handoff`: FuseOps fuses it into x's producer, which then
    stores 16 bits a value)."""
    from tvm import te

    dims = te_dims(shape)
    x = te.placeholder(dims, "float32", name="x")
    out = te.compute(dims, lambda *i: tir_bits(x(*i), precision), name="bits16")
    return te.create_prim_func([x, out]).without_attr("global_symbol")


def widen_kernel(shape: tuple[Dim, ...], precision: str) -> tvm.tirx.PrimFunc:
    """PrimFunc(bits, out): out = the fp32 value of 16-bit bit patterns, elementwise, as an
    ordinary block kernel (gathered embedding rows; FuseOps fuses it with the gather)."""
    from tvm import te

    dims = te_dims(shape)
    bits = te.placeholder(dims, "uint16", name="bits")
    out = te.compute(dims, lambda *i: tir_widen(bits(*i), precision), name="widen16")
    return te.create_prim_func([bits, out]).without_attr("global_symbol")


# -- the gate: what a CPU target computes 16-bit layers with ------------------------------------
# The features come from the target (`mcpu`, `mattr`), never from this host: `mcpu=znver4`
# compiles AVX512_BF16 code on any machine; `mcpu=znver3` gets the fp32 fallback everywhere.


def cpu_features(target: tvm.target.Target | None) -> set[str]:
    """The LLVM CPU features of an LLVM target (empty for anything else)."""
    from tvm.target import codegen

    if target is None or target.kind.name != "llvm":
        return set()
    return set(codegen.llvm_get_cpu_features(target))


def has_dpbf16(target: tvm.target.Target | None) -> bool:
    """Whether the target's CPU has `vdpbf16ps` (x86 AVX512_BF16)."""
    return {"avx512bf16", "avx512f"} <= cpu_features(target)


def is_arm(target: tvm.target.Target | None) -> bool:
    triple = str(target.attrs.get("mtriple", "") or "") if target is not None else ""
    return triple.startswith(("aarch64", "arm64"))


def kernel_note(target: tvm.target.Target | None, precision: str) -> str:
    """One line for the compile report: what the 16-bit layers run on this target."""
    features = cpu_features(target)
    if is_arm(target):
        flag, instruction = {"bf16": ("bf16", "BFMLALB/BFMLALT"), "fp16": ("fp16fml", "FMLAL")}[
            precision
        ]
        if flag in features:
            return f"{precision} multiply-adds into fp32 on this target: {instruction} (+{flag})"
        return f"{precision} computed in fp32 on this target: no +{flag}"
    if precision == "bf16":
        if has_dpbf16(target):
            return "bf16 dot products on this target: vdpbf16ps (AVX512_BF16)"
        return "bf16 computed in fp32 on this target: no AVX512_BF16"
    if "avx512fp16" in features:
        return "fp16 computed in fp32 on this target: AVX512_FP16 present, no fp16 kernel yet"
    conv = "F16C conversions" if "f16c" in features else "software conversions"
    return f"fp16 computed in fp32 on this target ({conv}): no AVX512_FP16"
