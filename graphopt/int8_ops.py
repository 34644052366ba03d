"""The int8 composite ops that `lower-int8` emits and a target's stage materializes.

`lower-int8` (a graph pass, target-independent) turns the QDQ form into calls of int8
kernels in a portable form; each kernel carries a recipe (`RECIPE_ATTR`, JSON) that says which
op it computes. A target stage (the CPU one: `materialize-int8`) replaces every such kernel by
one generated for the target's instructions and packs its constants for it at compile time.

Ops (recipe `kind`) and the operands of their calls, constants in natural layout:

    conv2d   x (NCHW or NHWC, `layout`), w int8 OIHW, corr int32 [Cout], scale fp32 [Cout],
             fbias fp32 [Cout]; any stride / padding / dilation / groups; padding reads zp
    matmul   x [.., K] (int8 / uint8; fp32 when `fused_quant`), w int8 [K, N], corr, scale,
             fbias [N], xs fp32 (a scalar, or [rows] when `per_row`; 1 when not dynamic)
    add      a, b int8 / uint8: the residual join, exact fixed-point rescale (`AddSpec`)
    quantize_nhwc  x fp32 NCHW (C <= 4), s fp32 []: int8 NHWC with 4 channels, the missing
             ones holding zp

conv2d / matmul compute, per output channel `ch`, the int32 sum `acc` of raw products x * w
(K small enough that it cannot overflow: `MAX_K`) and then the epilogue (`Epilogue`):

    requant:  q = clamp(round_half_even(f32(acc + corr[ch]) * scale[ch]) + zp_out, lo, hi)
    dequant:  y = clamp(f32(acc + corr[ch]) * scale[ch] * [xs] + fbias[ch], lo, hi)

`corr` is round(bias / (s_x s_w)) - zp_x * sum_k w: it carries the input zero point and, when
requantizing, the bias. A target whose instruction wants the activations shifted (x + off)
subtracts off * sum_k w from it when it packs the constants. `reference_*` below are the numpy
integer models of the same math.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

# shared with the int4 and 16-bit specs; the int8 kernels import them from here
from graphopt.matmul_recipe import Dim, row_count, tir_shape  # noqa: F401

RECIPE_ATTR = "graphopt.int8_kernel"

# Largest reduction whose int32 sum cannot overflow: 255 * 128 per product.
MAX_K = (2**31 - 1) // (255 * 128)

# Channels of the NHWC image input written by `quantize_nhwc` (one 32-bit word per pixel);
# NHWC window convs get their input channels padded to a multiple of it.
WORD_CHANNELS = 4


@dataclass(frozen=True)
class Epilogue:
    """What happens to the int32 accumulator: requantize to int8/uint8, or dequantize to fp32."""

    out_dtype: str  # "int8" / "uint8" (requant) or "float32" (dequant)
    zp: int = 0  # output zero point (requant)
    lo: float = -math.inf  # clamp bounds, in the quantized domain (requant) or real (dequant)
    hi: float = math.inf
    dynamic: bool = False  # dequant: multiply by a runtime activation scale

    @property
    def requant(self) -> bool:
        return self.out_dtype != "float32"

    def bounds(self) -> tuple[float, float]:
        if not self.requant:
            return self.lo, self.hi
        info = np.iinfo(self.out_dtype)
        return max(self.lo, float(info.min)), min(self.hi, float(info.max))

    def tir(self, acc, corr, scale, fbias, xs, lanes: int):
        """The epilogue as a TIR expression of `lanes` lanes (1: scalar)."""
        f32 = "float32" if lanes == 1 else f"float32x{lanes}"
        i32 = "int32" if lanes == 1 else f"int32x{lanes}"
        out = self.out_dtype if lanes == 1 else f"{self.out_dtype}x{lanes}"

        def const(v):
            c = T.float32(v)
            return c if lanes == 1 else T.broadcast(c, lanes)

        lo, hi = self.bounds()
        value = T.Cast(f32, acc + corr) * scale
        if self.requant:
            value = T.round(value) + const(float(self.zp))
            value = T.min(T.max(value, const(lo)), const(hi))
            return T.Cast(out, T.Cast(i32, value))
        if self.dynamic:
            value = value * xs
        value = value + fbias
        if lo > -math.inf:
            value = T.max(value, const(lo))
        if hi < math.inf:
            value = T.min(value, const(hi))
        return value

    def numpy(self, acc, corr, scale, fbias, xs=None):
        """The same math in numpy (the reference the kernels are checked against)."""
        value = (acc + corr).astype(np.float32) * scale.astype(np.float32)
        lo, hi = self.bounds()
        if self.requant:
            value = np.round(value) + np.float32(self.zp)
            return np.clip(value, lo, hi).astype(np.int32).astype(self.out_dtype)
        if self.dynamic:
            value = value * np.float32(xs)
        value = value + fbias.astype(np.float32)
        return np.clip(value, np.float32(lo), np.float32(hi)).astype(np.float32)


def epilogue_for(lo: float, hi: float, requant, dynamic: bool) -> tuple[Epilogue, float | None]:
    """The epilogue of a layer clamped to [lo, hi] (real values) that requantizes to
    `requant` = (scale, zero point, dtype) or, when None, dequantizes; and the requantize
    scale. Shared by `lower-int8` and the int8 probe graph, so both use the same bounds."""
    if requant is None:
        return Epilogue("float32", lo=lo, hi=hi, dynamic=dynamic), None
    s_o, zp_o, out_dtype = requant
    lo_q = max(-math.inf, round(lo / s_o) + zp_o) if lo > -math.inf else -math.inf
    hi_q = min(math.inf, round(hi / s_o) + zp_o) if hi < math.inf else math.inf
    return Epilogue(out_dtype, zp=zp_o, lo=lo_q, hi=hi_q), s_o


def epilogue_constants(
    ep: Epilogue,
    s_x: float | None,
    zp_x: int,
    s_w: np.ndarray,
    bias: np.ndarray | None,
    w_sum: np.ndarray,
    s_out: float | None,
) -> list[np.ndarray]:
    """Per-channel (corr int32, scale fp32, fbias fp32) of a conv / matmul epilogue (module
    docstring): `lower-int8` passes them to the kernels, the int8 probe graph to its exact
    simulation of them, so both compute the same numbers."""
    corr = -zp_x * w_sum.astype(np.int64)
    bias = np.zeros_like(s_w) if bias is None else bias
    if ep.requant:
        real = np.float64(s_x) * s_w.astype(np.float64)
        corr = corr + np.round(bias.astype(np.float64) / real).astype(np.int64)
        scale = (real / s_out).astype(np.float32)
        fbias = np.zeros_like(s_w)
    elif ep.dynamic:
        scale, fbias = s_w.astype(np.float32), bias
    else:
        scale = (np.float32(s_x) * s_w).astype(np.float32)
        fbias = bias
    corr = np.clip(corr, -(2**31), 2**31 - 1).astype(np.int32)
    return [corr, scale, fbias.astype(np.float32)]


@dataclass(frozen=True)
class ConvSpec:
    """A conv2d's shapes and attributes (NCHW / OIHW terms, whatever the layout). The batch,
    height and width may be symbolic (names); kernels then take them from x's shape at run
    time and compute the output size with `spatial`."""

    batch: Dim
    cin: int
    height: Dim
    width: Dim
    cout: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int
    act_dtype: str

    @property
    def out_hw(self) -> tuple[Dim, Dim]:
        """The output height and width; for a symbolic size, a name for it (planning only:
        kernels compute the size itself with `spatial`)."""
        if isinstance(self.height, int) and isinstance(self.width, int):
            return self.spatial(self.height, self.width)
        return f"{self.height}_out", f"{self.width}_out"

    def spatial(self, h, w):
        """The output height and width for input sizes h, w (ints or TIR expressions)."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        pt, pl, pb, pr = self.padding
        oh = (h + pt + pb - dh * (self.kh - 1) - 1) // sh + 1
        ow = (w + pl + pr - dw * (self.kw - 1) - 1) // sw + 1
        return oh, ow

    @property
    def depthwise(self) -> bool:
        return self.groups == self.cin == self.cout and self.groups > 1

    @property
    def pointwise(self) -> bool:
        return (self.kh, self.kw, self.stride, self.padding) == (1, 1, (1, 1), (0, 0, 0, 0))

    @property
    def k_group(self) -> int:
        return self.cin // self.groups * self.kh * self.kw

    @property
    def fp32_exact(self) -> bool:
        """A depthwise window sum is exact in fp32 (|sum| < 2^24): kernels may use FMAs."""
        return self.kh * self.kw * 255 * 128 < 2**24


def symbolic_rows(shape: tuple[Dim, ...]) -> Dim:
    """`MatmulSpec.rows` for an input of `shape`: the row count, or its symbolic dims' names
    (`"seq"`, `"n*h*w"`: what the kernel's row count is a product of, times static dims)."""
    if all(isinstance(d, int) for d in shape[:-1]):
        return int(np.prod(shape[:-1], dtype=np.int64))
    return "*".join(str(d) for d in shape[:-1] if d != 1)


@dataclass(frozen=True)
class MatmulSpec:
    # M times the batch dims; a string when symbolic (`symbolic_rows`): the kernel then
    # counts its rows from its input's shape at run time and plans for any count.
    rows: Dim
    k: int
    n: int
    act_dtype: str
    # Dynamic quantization with one run-time scale per row (token): xs is [rows], not a scalar.
    per_row: bool = False
    # Per-row dynamic quantization done by the kernel itself: x is fp32, the kernel computes
    # each row's scale max(max|x|, eps) / qmax and quantizes (round half to even, clamp to
    # [-128, 127]); xs is then unused.
    fused_quant: bool = False
    eps: float = 1e-8
    qmax: float = 127.0


@dataclass(frozen=True)
class AddSpec:
    """out = clamp(zp_o + rhe((ma * (a - zp_a) + mb * (b - zp_b)) / 2^shift), lo, hi).

    ma / mb are s_a / s_o and s_b / s_o in fixed point (`add_multipliers`); rhe is round half
    to even.
    """

    shape: tuple[int, ...]
    a_dtype: str
    b_dtype: str
    zp_a: int
    zp_b: int
    ma: int
    mb: int
    shift: int
    ep: Epilogue  # out dtype, zp_o, clamp bounds (quantized domain)


ADD_SHIFT = 24  # fixed-point bits (fewer when the multipliers are large)


def add_multipliers(s_a: float, s_b: float, s_o: float) -> tuple[int, int, int]:
    """(ma, mb, shift) with s_a / s_o ~ ma / 2^shift: 255 * (|ma| + |mb|) stays inside int32."""
    ra, rb = float(s_a) / float(s_o), float(s_b) / float(s_o)
    shift = ADD_SHIFT
    while shift > 0 and 255 * (abs(ra) + abs(rb) + 1) * 2**shift >= 2**31 - 1:
        shift -= 1
    return int(round(ra * 2**shift)), int(round(rb * 2**shift)), shift


def _rhe_shift(v, shift: int, lanes: int):
    """TIR: round-half-to-even of v / 2^shift (v int32, `lanes` lanes)."""
    i32 = "int32" if lanes == 1 else f"int32x{lanes}"

    def c(x):
        return T.int32(x) if lanes == 1 else T.broadcast(T.int32(x), lanes)

    if shift == 0:
        return v
    q = T.shift_right(v, c(shift))
    r = v - T.shift_left(q, c(shift))
    half = 1 << (shift - 1)
    up = T.Select(
        tvm.tirx.Or(r > c(half), tvm.tirx.And(r == c(half), T.bitwise_and(q, c(1)) == c(1))),
        c(1),
        c(0),
    )
    return T.Cast(i32, q + up)


def add_value(spec: AddSpec, a, b, lanes: int):
    """TIR: the add op on `lanes` lanes of a and b (the math every add kernel computes)."""
    i32 = "int32" if lanes == 1 else f"int32x{lanes}"
    ep = spec.ep
    lo, hi = ep.bounds()

    def c(x):
        return T.int32(x) if lanes == 1 else T.broadcast(T.int32(x), lanes)

    acc = (T.Cast(i32, a) - c(spec.zp_a)) * c(spec.ma) + (T.Cast(i32, b) - c(spec.zp_b)) * c(
        spec.mb
    )
    q = _rhe_shift(acc, spec.shift, lanes) + c(ep.zp)
    q = T.min(T.max(q, c(int(lo))), c(int(hi)))
    return T.Cast(ep.out_dtype if lanes == 1 else f"{ep.out_dtype}x{lanes}", q)


# --------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    """What one int8 kernel computes. `isa` is None in the portable form, else the scheme a
    target stage built the kernel for (its constants are then packed for that scheme)."""

    kind: str  # conv2d | matmul | add | quantize_nhwc
    spec: object  # ConvSpec | MatmulSpec | AddSpec | (n, c, h, w) for quantize_nhwc
    zp: int = 0  # the input zero point (what conv padding reads)
    ep: Epilogue | None = None
    layout: str = "NCHW"  # conv2d: NCHW or NHWC activations
    x_shape: tuple[int, ...] | None = None  # matmul: x's full shape
    out_dtype: str = ""  # quantize_nhwc
    isa: str | None = None

    def text(self) -> str:
        """The JSON stored in `RECIPE_ATTR`."""
        body = {
            "kind": self.kind,
            "spec": dataclasses.asdict(self.spec)
            if dataclasses.is_dataclass(self.spec)
            else list(self.spec),
            "zp": self.zp,
            "ep": dataclasses.asdict(self.ep) if self.ep is not None else None,
            "layout": self.layout,
            "x_shape": list(self.x_shape) if self.x_shape is not None else None,
            "out_dtype": self.out_dtype,
        }
        if self.isa is not None:
            body["isa"] = self.isa
        return json.dumps(body)

    @classmethod
    def parse(cls, text: str) -> Recipe:
        r = json.loads(text)
        ep = Epilogue(**r["ep"]) if r.get("ep") is not None else None
        kind = r["kind"]
        if kind == "conv2d":
            spec = ConvSpec(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in r["spec"].items()}
            )
        elif kind == "matmul":
            spec = MatmulSpec(**r["spec"])
        elif kind == "add":
            raw = dict(r["spec"])
            raw.update(shape=tuple(raw["shape"]), ep=Epilogue(**raw["ep"]))
            spec = AddSpec(**raw)
        else:
            spec = tuple(r["spec"])
        x_shape = tuple(r["x_shape"]) if r.get("x_shape") is not None else None
        return cls(kind, spec, r["zp"], ep, r["layout"], x_shape, r["out_dtype"], r.get("isa"))


def recipe_of(func) -> Recipe | None:
    """The recipe of a PrimFunc, or None when it is no int8 kernel."""
    attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) else None
    if attrs is None or RECIPE_ATTR not in attrs:
        return None
    return Recipe.parse(str(attrs[RECIPE_ATTR]))


# --------------------------------------------------------------------------------------------
# numpy integer models


def reference_conv2d(x, w, spec: ConvSpec, zp: int) -> np.ndarray:
    """numpy int64 conv of (x - zp) with w (NCHW / OIHW), the exact integer result."""
    oh, ow = spec.out_hw
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pt, pl, pb, pr = spec.padding
    xs = x.astype(np.int64) - zp
    xs = np.pad(xs, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    groups, cg, og = spec.groups, spec.cin // spec.groups, spec.cout // spec.groups
    out = np.zeros((spec.batch, spec.cout, oh, ow), np.int64)
    for ry in range(spec.kh):
        for rx in range(spec.kw):
            patch = xs[:, :, ry * dh : ry * dh + sh * (oh - 1) + 1 : sh]
            patch = patch[:, :, :, rx * dw : rx * dw + sw * (ow - 1) + 1 : sw]
            for g in range(groups):
                wg = w[g * og : (g + 1) * og, :, ry, rx].astype(np.int64)
                xg = patch[:, g * cg : (g + 1) * cg]
                out[:, g * og : (g + 1) * og] += np.einsum("oc,nchw->nohw", wg, xg)
    return out


def reference_add(a: np.ndarray, b: np.ndarray, spec: AddSpec) -> np.ndarray:
    """numpy integer model of the add op (round half to even on the fixed-point sum)."""
    acc = (a.astype(np.int64) - spec.zp_a) * spec.ma + (b.astype(np.int64) - spec.zp_b) * spec.mb
    q = acc >> spec.shift if spec.shift else acc
    r = acc - (q << spec.shift)
    half = 1 << (spec.shift - 1) if spec.shift else 0
    if spec.shift:
        q = q + ((r > half) | ((r == half) & (q % 2 == 1)))
    lo, hi = spec.ep.bounds()
    return np.clip(q + spec.ep.zp, lo, hi).astype(spec.ep.out_dtype)
