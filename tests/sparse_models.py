"""Small Relax graphs with block-sparse constant weights, shared by the sparse tests."""

from __future__ import annotations

import numpy as np
from tvm import relax

from graphopt.testing import single_input_module


def block_sparse(k: int, n: int, block: int, density: float, seed: int = 0) -> np.ndarray:
    """W [K, N] fp32 whose `block` x 1 output-channel blocks are nonzero with `density`
    (exactly round(density * blocks) of them), nonzero values everywhere else."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[w == 0] = 1.0
    blocks = w.reshape(k, n // block, block)
    keep = np.zeros(blocks.shape[:2], bool).reshape(-1)
    keep[rng.permutation(keep.size)[: round(density * keep.size)]] = True
    blocks[~keep.reshape(blocks.shape[:2])] = 0.0
    return w


def conv1x1_nhwc(w: np.ndarray, hw=(7, 7), clip=True, stride=1) -> relax.Function:
    """NHWC 1x1 conv (OHWI weight from W [K, N]) + bias [+ relu6], as `layout` leaves it."""
    return single_input_module((1, *hw, w.shape[0]), lambda bb, x: _conv1x1(bb, x, w, clip, stride))


def residual_conv1x1(w: np.ndarray, hw=(7, 7), clip=False) -> relax.Function:
    """x + (NHWC 1x1 conv of x with W [K, K] + bias [+ relu6]): a projection and its residual
    join, as MobileNetV2's blocks end."""

    def build(bb, x):
        y = _conv1x1(bb, x, w, clip, 1)
        return relax.op.add(y if isinstance(y, relax.Var) else bb.emit(y), x)

    return single_input_module((1, *hw, w.shape[0]), build)


def _conv1x1(bb, x, w: np.ndarray, clip: bool, stride: int):
    k, n = w.shape
    bias = np.linspace(-1, 1, n, dtype=np.float32)
    ohwi = np.ascontiguousarray(w.T.reshape(n, 1, 1, k))
    y = bb.emit(
        relax.op.nn.conv2d(
            x,
            relax.const(ohwi),
            strides=stride,
            data_layout="NHWC",
            kernel_layout="OHWI",
            out_layout="NHWC",
        )
    )
    y = bb.emit(relax.op.add(y, relax.const(bias)))
    return relax.op.clip(y, 0.0, 6.0) if clip else y


def conv1x1_nchw(w: np.ndarray, hw=(7, 7), clip=True, batch=1, residual=False):
    """NCHW 1x1 conv (OIHW weight from W [K, N]) + bias [1, N, 1, 1] [+ relu6] [+ x]: as the
    ONNX importer brings a pointwise conv in (ARM, or x86 with layout=NCHW)."""
    k, n = w.shape

    def build(bb, x):
        oihw = np.ascontiguousarray(w.T.reshape(n, k, 1, 1))
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(oihw)))
        bias = np.linspace(-1, 1, n, dtype=np.float32).reshape(1, n, 1, 1)
        y = bb.emit(relax.op.add(y, relax.const(bias)))
        y = bb.emit(relax.op.clip(y, 0.0, 6.0)) if clip else y
        return relax.op.add(y, x) if residual else y

    return single_input_module((batch, k, *hw), build)


def dense(w: np.ndarray, rows=(1,), relu=False) -> relax.Function:
    """x [rows.., K] @ W + bias [+ relu]: a Gemm / MatMul + Add layer."""
    k, n = w.shape
    bias = np.linspace(-1, 1, n, dtype=np.float32)

    def build(bb, x):
        y = bb.emit(relax.op.add(bb.emit(relax.op.matmul(x, relax.const(w))), relax.const(bias)))
        return relax.op.nn.relu(y) if relu else y

    return single_input_module((*rows, k), build)


def dense_gelu(w: np.ndarray, rows=(1, 12), erf_form: bool = True) -> relax.Function:
    """GELU(x @ W + bias): a transformer's first FFN matmul, its GELU in the erf form exporters
    write (h * (erf(h / sqrt 2) + 1) * 0.5) or as relax.nn.gelu."""
    k, n = w.shape
    bias = np.linspace(-1, 1, n, dtype=np.float32)

    def build(bb, x):
        h = bb.emit(relax.op.add(bb.emit(relax.op.matmul(x, relax.const(w))), relax.const(bias)))
        if not erf_form:
            return relax.op.nn.gelu(h)
        erf = bb.emit(relax.op.erf(bb.emit(relax.op.divide(h, relax.const(np.float32(2**0.5))))))
        one = bb.emit(relax.op.add(erf, relax.const(np.float32(1.0))))
        return relax.op.multiply(bb.emit(relax.op.multiply(h, one)), relax.const(np.float32(0.5)))

    return single_input_module((*rows, k), build)
