"""The block-sparse matmul op that `sparsify` emits and a target's stage materializes.

`sparsify` (a graph pass, target-independent) replaces a matmul over channels whose constant
weight is mostly zero blocks (an NHWC 1x1 conv, a matmul / Gemm / dense layer) by one call of
a portable kernel carrying a recipe (`RECIPE_ATTR`, JSON); the CPU stage `materialize-sparse`
swaps in a vectorized kernel with the same operands. The operands, all but x constants:

    x        [.., K] fp32 (rows = the product of the leading dims: pixels, or tokens; the
             dims may be symbolic, the kernels then take any row count)
    values   [nnzb, block] fp32: the nonzero blocks, block = `block` consecutive output
             channels of one input channel (BSR over W^T: output-channel blocks x 1)
    indices  [nnzb] int32: the input channel of each block
    indptr   [N / block + 1] int32: blocks of output-channel block b are indptr[b] .. b+1
    bias     [N] fp32 (zeros when the layer has none)
    residual [.., N] fp32, only with `residual`: a tensor added last (a residual join)
    out      [.., N] fp32 = clamp([gelu](x @ W + bias), lo, hi) [+ residual]

With `layout="nchw"` (a 1x1 conv over NCHW: ARM, or x86 with `layout=NCHW`) x is
[B, K, H, W] and out, residual [B, N, H, W]; the weights are the same BSR arrays (a block of
1 output channel is plain CSR: unstructured zeros).

Only the nonzero blocks are stored, so the artifact shrinks with the block density (a model
with 70% zero blocks keeps 30% of those weights plus one int32 index per block).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.gelu import tir_gelu
from graphopt.matmul_recipe import Dim, row_count, tir_shape

RECIPE_ATTR = "graphopt.sparse_kernel"


@dataclass(frozen=True)
class SparseSpec:
    """Shapes and epilogue of one block-sparse matmul (what its kernel is built from)."""

    x_shape: tuple[Dim, ...]  # symbolic dims by name (a sequence, a batch, an image size)
    n: int
    block: int
    nnzb: int
    lo: float = -math.inf
    hi: float = math.inf
    residual: bool = False  # a tensor of the output's shape added after the clamp
    gelu: bool = False  # GELU (graphopt.gelu) after the bias, before the clamp
    isa: str | None = None  # set by the target stage that built the kernel
    layout: str = "rows"  # "rows": x [.., K]; "nchw": x [B, K, H, W] (static)

    @property
    def nchw(self) -> bool:
        return self.layout == "nchw"

    @property
    def rows(self) -> int:
        """The row count of a static input (kernels with symbolic dims use `kernel_dims`);
        NCHW: the images."""
        return self.x_shape[0] if self.nchw else math.prod(self.x_shape[:-1])

    @property
    def pixels(self) -> int:
        """NCHW: pixels per image."""
        return self.x_shape[2] * self.x_shape[3]

    def kernel_dims(self) -> tuple[tuple, int | tvm.tirx.PrimExpr]:
        """(x's shape for a kernel's buffers, its row count): symbolic dims as size vars."""
        x_shape = tir_shape(self.x_shape)
        return x_shape, (x_shape[0] if self.nchw else row_count(x_shape))

    @property
    def k(self) -> int:
        return self.x_shape[1] if self.nchw else self.x_shape[-1]

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.nchw:
            return (self.x_shape[0], self.n, *self.x_shape[2:])
        return (*self.x_shape[:-1], self.n)

    @property
    def blocks(self) -> int:
        return self.n // self.block

    def text(self) -> str:
        data = dataclasses.asdict(self)
        data["lo"], data["hi"] = _finite(self.lo), _finite(self.hi)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> SparseSpec:
        data = json.loads(text)
        data["x_shape"] = tuple(data["x_shape"])
        data["lo"] = -math.inf if data["lo"] is None else data["lo"]
        data["hi"] = math.inf if data["hi"] is None else data["hi"]
        return cls(**data)


def _finite(v: float) -> float | None:
    return None if math.isinf(v) else v


def spec_of(func) -> SparseSpec | None:
    """The recipe a sparse kernel carries, else None."""
    if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None:
        return None
    if RECIPE_ATTR not in func.attrs:
        return None
    return SparseSpec.from_text(str(func.attrs[RECIPE_ATTR]))


def block_density(w: np.ndarray, block: int) -> float:
    """Fraction of nonzero `block` x 1 blocks of W [K, N] (blocks along N); 1.0 when N is no
    multiple of `block`."""
    k, n = w.shape
    if n % block:
        return 1.0
    nonzero = np.any(w.reshape(k, n // block, block) != 0, axis=2)
    return float(nonzero.mean()) if nonzero.size else 1.0


def to_bsr(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [K, N] -> (values [nnzb, block], indices [nnzb], indptr [N / block + 1]).

    At least one (zero) block is stored so no buffer is empty; indptr then stays all zero.
    """
    k, n = w.shape
    blocks = w.reshape(k, n // block, block).transpose(1, 0, 2)  # [nb, K, block]
    nonzero = np.any(blocks != 0, axis=2)
    b_idx, k_idx = np.nonzero(nonzero)  # row-major: grouped by output block, k ascending
    values = blocks[b_idx, k_idx].astype(np.float32)
    indptr = np.zeros(n // block + 1, np.int32)
    np.cumsum(nonzero.sum(axis=1), out=indptr[1:])
    indices = k_idx.astype(np.int32)
    if values.shape[0] == 0:
        values, indices = np.zeros((1, block), np.float32), np.zeros(1, np.int32)
    return np.ascontiguousarray(values), indices, indptr


def from_bsr(values, indices, indptr, k: int, block: int) -> np.ndarray:
    """The dense W [K, N] of a BSR triple (tests, and the report's checks)."""
    nb = len(indptr) - 1
    w = np.zeros((k, nb * block), np.float32)
    for b in range(nb):
        for j in range(indptr[b], indptr[b + 1]):
            w[indices[j], b * block : (b + 1) * block] = values[j]
    return w


def kernel_func(body, spec: SparseSpec, dims: tuple, attrs: dict) -> tvm.tirx.PrimFunc:
    """The PrimFunc (x, values, indices, indptr, bias, [residual], out) of a block-sparse
    kernel whose `body` macro takes (x [rows, K], values, indices, indptr, bias,
    residual [rows, N] or None, out [rows, N]); `dims` is the `spec.kernel_dims()` the body
    was built with (its symbolic dims are the function's)."""
    x_shape, rows = dims
    k, n, bs, nnzb, nb = spec.k, spec.n, spec.block, spec.nnzb, spec.blocks
    if spec.nchw:  # views [B, K, H*W] and [B, N, H*W]
        out_shape = (x_shape[0], n, *x_shape[2:])
        pixels = x_shape[2] * x_shape[3]
        x_view, out_dims = (rows, k, pixels), (rows, n, pixels)
    else:
        out_shape = (*x_shape[:-1], n)
        x_view, out_dims = (rows, k), (rows, n)
    residual_view = (lambda b: b.view(*out_dims)) if spec.residual else (lambda b: None)

    @T.prim_func(private=True)
    def bsr_matmul(
        x: T.Buffer(x_shape, "float32"),
        values: T.Buffer((nnzb, bs), "float32"),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((nb + 1,), "int32"),
        bias: T.Buffer((n,), "float32"),
        residual: T.Buffer(out_shape, "float32"),
        out: T.Buffer(out_shape, "float32"),
    ):
        T.func_attr(attrs)
        body(
            x.view(*x_view),
            values,
            indices,
            indptr,
            bias,
            residual_view(residual),
            out.view(*out_dims),
        )

    func = bsr_matmul
    if not spec.residual:  # the body never reads it
        params = [p for p in func.params if p.name != "residual"]
        func = tvm.tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)
    return func.with_attr(RECIPE_ATTR, spec.text())


def epilogue(value, spec: SparseSpec, bias, residual, row, col, lanes: int = 1):
    """TIR: clamp([gelu](value + bias[col..])) [+ residual[row, col..]] for `lanes` channels."""
    idx = col if lanes == 1 else T.ramp(col, 1, lanes)
    value = value + bias[idx]
    value = clamp(tir_gelu(value, lanes) if spec.gelu else value, spec.lo, spec.hi, lanes)
    return value + residual[row, idx] if spec.residual else value


def epilogue_nchw(value, spec: SparseSpec, bias, residual, image, channel, pixel, lanes=1):
    """TIR, NCHW: the same for `lanes` pixels of one channel (one bias value for all)."""
    idx = pixel if lanes == 1 else T.ramp(pixel, 1, lanes)
    value = value + (bias[channel] if lanes == 1 else T.broadcast(bias[channel], lanes))
    value = clamp(tir_gelu(value, lanes) if spec.gelu else value, spec.lo, spec.hi, lanes)
    return value + residual[image, channel, idx] if spec.residual else value


def clamp(value, lo: float, hi: float, lanes: int = 1):
    """TIR clamp of `value` (scalar, or `lanes` wide) to [lo, hi]; infinite bounds left out."""

    def bound(v: float):
        c = T.float32(v)
        return c if lanes == 1 else T.broadcast(c, lanes)

    if not math.isinf(lo):
        value = T.max(value, bound(lo))
    if not math.isinf(hi):
        value = T.min(value, bound(hi))
    return value
