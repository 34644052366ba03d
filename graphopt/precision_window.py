"""A full (window) conv as the 16-bit matmul: its input's windows gathered into rows of bit
patterns, then the op of `graphopt.precision_ops` over them.

    patches [N, OH, OW, KH*KW*C] = r(xpad)[n, oh*sh + i*dh, ow*sw + j*dw, c]   (i, j, c)
    y [N, OH, OW, O] = patches @ W',   W' [KH*KW*C, O] = W [O, C, KH, KW] as (i, j, c) x O

x is NHWC, xpad its zero padding, r the rounding of the 16-bit layers. The gather is an
ordinary elementwise kernel (`window_bits_kernel`: schedule rules vectorize it, FuseOps fuses
the transpose before it) that stores 16 bits a value, and the matmul reads them as an `x_bits`
input, so the rows are rounded once and are half the bytes of fp32 rows. The products and
sums are the matmul's: exact products, fp32 sums in the op's pair order over (i, j, c); a
window position on the padding contributes r(0) x w = 0 (as the conv's own zero does, except
0 x Inf). `reference_window` is the numpy model.

Why a gather and not a direct conv kernel: the stem convs this is for have 3 input channels,
so a direct kernel's inner loop would be 3 long; as rows of 27 (3x3x3) the tuned matmul
kernels (`vdpbf16ps`, BFMLAL, the fp32-FMA panels) run them with their register tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.precision_ops import PrecisionMatmulSpec, reference_matmul, tir_bits, to_bits

PAD_BITS = np.zeros(1, np.uint16)  # the bit pattern of +0 in bf16 and fp16


@dataclass(frozen=True)
class Window:
    """A conv's window geometry (NHWC input, static shape)."""

    x_shape: tuple[int, int, int, int]  # N, H, W, C
    kernel: tuple[int, int]  # KH, KW
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w, _ = self.x_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilation
        t, left, b, r = self.pads
        return (h + t + b - (kh - 1) * dh - 1) // sh + 1, (
            w + left + r - (kw - 1) * dw - 1
        ) // sw + 1

    @property
    def k(self) -> int:
        return self.kernel[0] * self.kernel[1] * self.x_shape[3]

    @property
    def k_padded(self) -> int:
        """K rounded up to even: the matmul reads a row of bits as (k even, k odd) words."""
        return self.k + self.k % 2

    @property
    def patches_shape(self) -> tuple[int, int, int, int]:
        return (self.x_shape[0], *self.out_hw, self.k_padded)


def window_weight(w: np.ndarray) -> np.ndarray:
    """OIHW [O, C, KH, KW] -> [K', O], rows in the patches' (i, j, c) order (a zero row past
    an odd K)."""
    rows = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
    return np.ascontiguousarray(np.pad(rows, ((0, rows.shape[0] % 2), (0, 0))))


def window_bits_kernel(win: Window, precision: str, lanes: int = 16) -> tvm.tirx.PrimFunc:
    """PrimFunc(x [N, H, W, C] fp32, pad [1] uint16, patches [N, OH, OW, K'] uint16):
    r(xpad)'s windows as 16-bit bit patterns, `pad` (the bits of zero, `PAD_BITS`) on the
    padding and in column K of an odd K, so the matmul reads a row as whole (k even, k odd)
    words. (`pad` as an operand: Relax's RewriteDataflowReshape rejects a block-free kernel
    with one input, docs/TVM_NOTES.md.)

    A parallel task is one output row of one image: it rounds the KH input rows its windows
    read into a scratch of padded rows (`lanes` values a vector step; rows on the padding
    are `pad`), then copies each window's runs from there: with no dilation a kernel row's KW
    taps are KW * C contiguous values, one vector copy. Opaque to FuseOps, like the matmul
    after it."""
    n, h, w, c = win.x_shape
    (kh, kw), (sh, sw), (dh, dw) = win.kernel, win.strides, win.dilation
    top, left, right = win.pads[0], win.pads[1], win.pads[3]
    oh, ow = win.out_hw
    k, kp, wide = win.k, win.k_padded, (w + left + right) * c
    run_taps = kw if dw == 1 else 1  # taps read as one contiguous run
    run, body = run_taps * c, w * c // lanes * lanes

    @T.prim_func(private=True)
    def gather(
        x: T.Buffer((n, h, w, c), "float32"),
        pad: T.Buffer((1,), "uint16"),
        out: T.Buffer((n, oh, ow, kp), "uint16"),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        xf = T.decl_buffer((n * h * w * c,), "float32", data=x.data)
        of = T.decl_buffer((n * oh * ow * kp,), "uint16", data=out.data)
        for task in T.parallel(n * oh):
            xs = T.decl_buffer((kh * wide,), "uint16")
            for i in range(kh):
                y = T.meta_var(task % oh * sh + i * dh - top)
                src = T.meta_var((task // oh * h + y) * w * c)
                if 0 <= y and y < h:
                    for t in range(left * c):
                        xs[i * wide + t] = pad[0]
                    for v in range(body // lanes):
                        at = T.meta_var(i * wide + left * c + v * lanes)
                        value = T.meta_var(xf[T.ramp(src + v * lanes, 1, lanes)])
                        xs[T.ramp(at, 1, lanes)] = tir_bits(value, precision, lanes)
                    for t in range(body, w * c):
                        xs[i * wide + left * c + t] = tir_bits(xf[src + t], precision)
                    for t in range(right * c):
                        xs[i * wide + (left + w) * c + t] = pad[0]
                else:
                    for t in range(wide):
                        xs[i * wide + t] = pad[0]
            for px in range(ow):
                for i, r in T.grid(kh, kw // run_taps):
                    col = T.meta_var((task * ow + px) * kp + (i * kw + r * run_taps) * c)
                    at = T.meta_var(i * wide + (px * sw + r * run_taps * dw) * c)
                    for t in T.vectorized(run):
                        of[col + t] = xs[at + t]
                for t in range(kp - k):
                    of[(task * ow + px) * kp + k + t] = pad[0]

    return gather


def window_patches(x: np.ndarray, win: Window, precision: str) -> np.ndarray:
    """numpy model of `window_bits_kernel`."""
    t, left, b, r = win.pads
    xpad = np.pad(np.asarray(x, np.float32), ((0, 0), (t, b), (left, r), (0, 0)))
    (kh, kw), (sh, sw), (dh, dw) = win.kernel, win.strides, win.dilation
    oh, ow = win.out_hw
    cols = [
        xpad[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = np.concatenate(cols, axis=-1)
    patches = np.pad(patches, ((0, 0),) * 3 + ((0, win.k_padded - win.k),))
    return to_bits(patches, precision)


def reference_window(x: np.ndarray, w: np.ndarray, win: Window, precision: str) -> np.ndarray:
    """numpy model of the 16-bit window conv: NHWC x, OIHW fp32 w -> [N, OH, OW, O]."""
    spec = PrecisionMatmulSpec(win.patches_shape, int(w.shape[0]), precision, x_bits=True)
    w_bits = to_bits(window_weight(w), precision)
    return reference_matmul(window_patches(x, win, precision), w_bits, spec)
