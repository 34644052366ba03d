"""The 16-bit depthwise conv op that `lower-precision` emits and a CPU stage materializes.

    y [N, OH, OW, C] = sum over taps (i, j) of r(xpad)[n, oh*sh + i, ow*sw + j, c] * W[i, j, c]

NHWC, one filter per channel (groups = channels), W [KH, KW, C] stored as 16-bit (bf16 or
fp16) bit patterns; xpad is x with zero padding, r rounds it to the same format. As in the
16-bit matmul (`graphopt.precision_ops`) the products of two 16-bit numbers are exact in fp32
and summed in fp32, here in tap order (i, then j), starting from zero; a tap that falls on
the padding is skipped (adding its zero product would change nothing, except 0 x Inf). The
epilogue (bias, clamp) and the bit-pattern
handoff (`x_bits`, `out_bits`) are the matmul's (`precision_epilogue`, `precision-handoff`).

A depthwise conv has 9 or 25 weights per channel: its cost is the activations it reads and
writes, which 16-bit storage halves; the arithmetic stays fp32 FMAs on widened values (a pair
dot product such as `vdpbf16ps` would need the two taps of a pair interleaved per channel, a
shuffle per load). Static shapes only: a layer with a symbolic dim stays fp32.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.precision_epilogue import reference_epilogue, tir_epilogue
from graphopt.precision_ops import from_bits, tir_round, tir_store_value, tir_widen, x_rounded

RECIPE_ATTR = "graphopt.precision_depthwise"
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}  # opaque, as matmul16


@dataclass(frozen=True)
class DepthwiseSpec:
    x_shape: tuple[int, int, int, int]  # N, H, W, C
    kernel: tuple[int, int]  # KH, KW
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    precision: str  # bf16 | fp16
    layout: str = "natural"  # natural [KH, KW, C] | a target's build ("cpu")
    bias: bool = False  # + bias [C] (an operand after the weight)
    lo: float = -math.inf  # then clamp to [lo, hi]
    hi: float = math.inf
    x_bits: bool = False  # x arrives as 16-bit bit patterns (uint16)
    out_bits: bool = False  # the output stored as 16-bit bit patterns
    gelu = False  # the epilogue helpers read these; a depthwise conv has neither
    residual = False

    @property
    def channels(self) -> int:
        return self.x_shape[3]

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, h, w, c = self.x_shape
        (kh, kw), (sh, sw), (t, left, b, r) = self.kernel, self.strides, self.pads
        return n, (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1, c

    def text(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def parse(cls, text: str) -> DepthwiseSpec:
        raw = json.loads(text)
        for key in ("x_shape", "kernel", "strides", "pads"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


def spec_of(func) -> DepthwiseSpec | None:
    """The spec of a 16-bit depthwise kernel, or None when `func` is none."""
    attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) else None
    if attrs is None or RECIPE_ATTR not in attrs:
        return None
    return DepthwiseSpec.parse(str(attrs[RECIPE_ATTR]))


def reference_depthwise(x, w_bits, spec: DepthwiseSpec, bias=None) -> np.ndarray:
    """numpy model of the op: rounded operands, exact products, fp32 sums in tap order from
    zero, then the epilogue (x: fp32, or its bit patterns for an `x_bits` spec)."""
    xr = x_rounded(x, spec)
    t, left, b, r = spec.pads
    xp = np.pad(xr, ((0, 0), (t, b), (left, r), (0, 0)))
    inside = np.pad(np.ones(xr.shape[1:3], bool), ((t, b), (left, r)))
    w = from_bits(w_bits, spec.precision)
    n, oh, ow, c = spec.out_shape
    (kh, kw), (sh, sw) = spec.kernel, spec.strides
    acc = np.zeros((n, oh, ow, c), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(kh):
            for j in range(kw):
                rows = slice(i, i + sh * (oh - 1) + 1, sh)
                cols = slice(j, j + sw * (ow - 1) + 1, sw)
                product = xp[:, rows, cols] * w[i, j]
                acc = np.where(inside[rows, cols][None, :, :, None], acc + product, acc)
        return reference_epilogue(acc, spec, bias)


def x_value(v, spec: DepthwiseSpec, lanes: int = 1):
    """TIR: r(x) of one element (or vector) of x as fp32."""
    if spec.x_bits:
        return tir_widen(v, spec.precision, lanes)
    return tir_round(v, spec.precision, lanes)


def kernel_func(body, spec: DepthwiseSpec, attrs: dict) -> tvm.tirx.PrimFunc:
    """The PrimFunc (x, w, [bias], out) whose `body` macro takes (x, w, bias, out), carrying
    its spec."""
    x_dtype = "uint16" if spec.x_bits else "float32"
    out_dtype = "uint16" if spec.out_bits else "float32"
    kh, kw = spec.kernel
    c = spec.channels

    @T.prim_func(private=True)
    def depthwise16(
        x: T.Buffer(spec.x_shape, x_dtype),
        w: T.Buffer((kh, kw, c), "uint16"),
        bias: T.Buffer((c,), "float32"),
        out: T.Buffer(spec.out_shape, out_dtype),
    ):
        T.func_attr(attrs)
        body(x, w, bias, out)

    func = depthwise16.with_attr(RECIPE_ATTR, spec.text())
    if spec.bias:
        return func
    params = [p for p in func.params if p.name != "bias"]  # the body never reads it
    return tvm.tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)


def portable_kernel(spec: DepthwiseSpec) -> tvm.tirx.PrimFunc:
    """The op as plain scalar TIR (builds and runs on any target; output rows in parallel)."""
    n, oh, ow, c = spec.out_shape
    _, h, wd, _ = spec.x_shape
    (kh, kw), (sh, sw), (t, left, _, _) = spec.kernel, spec.strides, spec.pads
    prec = spec.precision

    @T.macro
    def body(x, w, bias, out):
        for row in T.parallel(n * oh):
            acc = T.decl_buffer((1,), "float32", scope="local")
            for col, ch in T.grid(ow, c):
                acc[0] = T.float32(0)
                for i, j in T.grid(kh, kw):
                    ih = T.meta_var(row % oh * sh + i - t)
                    iw = T.meta_var(col * sw + j - left)
                    inside = T.meta_var(0 <= ih and ih < h and 0 <= iw and iw < wd)
                    if inside:
                        xv = T.meta_var(x_value(x[row // oh, ih, iw, ch], spec))
                        acc[0] = acc[0] + xv * tir_widen(w[i, j, ch], prec)
                value = tir_epilogue(acc[0], spec, bias, None, 0, ch)
                out[row // oh, row % oh, col, ch] = tir_store_value(value, spec)

    return kernel_func(body, spec, _ATTRS)
