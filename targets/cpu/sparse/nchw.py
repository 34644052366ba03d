"""The CPU block-sparse 1x1 conv over NCHW: what `materialize-sparse` builds for `sparsify`'s
op on ARM (convs stay NCHW there) and on x86 with `layout=NCHW`.

out[b, n, p] = epilogue(sum over the nonzero blocks of n's block of x[b, k, p] * value): the
pixels of one image are contiguous, so they go in SIMD lanes and a weight is a scalar. A task
is one image, one output block (`block` channels, 1 for unstructured zeros) and a tile of
`u` pixel vectors: per nonzero block, `u` vector loads of the input channel's pixels and
`block * u` FMAs with the block's values broadcast. Any zero pattern is skipped, whole blocks
or single weights: time is proportional to the nonzeros. Pixels left after the full tiles are
one shorter tile of whole vectors and then single pixels, in the image's last task.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.sparse_ops import SparseSpec, epilogue_nchw, kernel_func
from graphopt.targets.cpu.schedules.common import CpuInfo
from graphopt.targets.cpu.sparse.kernels import PARALLEL_MIN_WORK

# Pixel vectors per tile at most (independent accumulators for one output channel).
MAX_VECTORS = 8


def nchw_plan(pixels: int, block: int, info: CpuInfo) -> tuple[int, int]:
    """(lanes, pixel vectors per tile): whole registers where the image has that many pixels,
    as many vectors as the accumulators allow for the block's channels."""
    lanes = info.lanes if pixels >= info.lanes else 1
    vectors = max(1, min(MAX_VECTORS, info.accumulators // block, pixels // lanes))
    return lanes, vectors


def _tile(spec: SparseSpec, vectors: int, lanes: int):
    """TIR macro: `vectors` x `lanes` pixels from p0 of one image and output block."""
    bs = spec.block

    def vec(value):
        return value if lanes == 1 else T.broadcast(value, lanes)

    def pix(p):
        return p if lanes == 1 else T.ramp(p, 1, lanes)

    dtype = "float32" if lanes == 1 else f"float32x{lanes}"

    @T.macro
    def tile(xf, values, indices, indptr, bias, residual, of, img, ob, p0):
        acc = T.decl_buffer((bs * vectors,), dtype, scope="local")
        for i in T.unroll(bs * vectors):
            acc[i] = vec(T.float32(0))
        for j in range(indptr[ob], indptr[ob + 1]):
            for v in T.unroll(vectors):
                for c in T.unroll(bs):
                    acc[c * vectors + v] = (
                        acc[c * vectors + v]
                        + vec(values[j, c]) * xf[img, indices[j], pix(p0 + v * lanes)]
                    )
        for c in T.unroll(bs):
            for v in T.unroll(vectors):
                ch = T.meta_var(ob * bs + c)
                of[img, ch, pix(p0 + v * lanes)] = epilogue_nchw(
                    acc[c * vectors + v], spec, bias, residual, img, ch, p0 + v * lanes, lanes
                )

    return tile


def bsr_nchw_kernel(spec: SparseSpec, info: CpuInfo) -> tvm.tirx.PrimFunc:
    """The vectorized NCHW kernel of `spec` (static shapes) for `info`'s SIMD width."""
    dims = spec.kernel_dims()
    images, pixels, nb = spec.rows, spec.pixels, spec.blocks
    lanes, vectors = nchw_plan(pixels, spec.block, info)
    full = pixels // (vectors * lanes)
    rest = pixels - full * vectors * lanes
    rest_vectors, singles = rest // lanes, rest % lanes
    tiles = full + (rest > 0)
    work = images * pixels * spec.nnzb * spec.block
    loop = T.parallel if work >= PARALLEL_MIN_WORK else T.serial
    main = _tile(spec, vectors, lanes)
    partial = _tile(spec, max(rest_vectors, 1), lanes)
    single = _tile(spec, 1, 1)

    @T.macro
    def body(xf, values, indices, indptr, bias, residual, of):
        for task in loop(images * tiles * nb):
            img = T.meta_var(task // (tiles * nb))
            t = T.meta_var(task // nb % tiles)
            ob = T.meta_var(task % nb)
            if t < full:
                main(xf, values, indices, indptr, bias, residual, of, img, ob, t * vectors * lanes)
            else:
                if rest_vectors > 0:
                    p0 = T.meta_var(full * vectors * lanes)
                    partial(xf, values, indices, indptr, bias, residual, of, img, ob, p0)
                for s in range(singles):
                    p1 = T.meta_var(pixels - singles + s)
                    single(xf, values, indices, indptr, bias, residual, of, img, ob, p1)

    attrs = {"tirx.noalias": True, "tirx.is_scheduled": True}
    return kernel_func(body, spec, dims, attrs)
