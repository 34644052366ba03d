"""The CPU block-sparse matmul kernel: what `materialize-sparse` builds for `sparsify`'s op.

out[rows, N] = clamp(x[rows, K] @ W + bias) with W as BSR blocks of `block` output channels
x 1 input channel (`graphopt.sparse_ops`). One task is a tile of `mr` rows times one output
block: `mr * block / lanes` vector accumulators stay in registers while the block's nonzero
input channels stream by, each one broadcast of x[row, k] and one FMA per vector of the
block's values; bias and clamp are applied on the tile in registers before it is stored.
Work per task is proportional to the nonzeros, so time scales with the block density. Tasks
(row tiles x output blocks, row-tile major so neighbouring tasks share the x tile) run in
parallel. Batch-1 GEMV is the same kernel with mr = 1: the tasks are the output blocks. With
a symbolic row count (a sequence range, a symbolic batch or image size) the tile is the
tallest the registers hold and the last one stores only its valid rows.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from graphopt.sparse_ops import RECIPE_ATTR, SparseSpec, clamp
from graphopt.targets.cpu.schedules.common import CpuInfo

# Kernels with fewer multiply-adds than this run serially: waking the runtime's sleeping
# workers costs ~10 us a parallel region (see int8's PARALLEL_MIN_WORK); 512K fp32
# multiply-adds are ~25 us on one core. The 70%-sparse MiniLM GEMV ran 3x faster than dense on
# one thread and slower than dense on two.
PARALLEL_MIN_WORK = 1 << 19


def row_tile(rows: int, most: int) -> int:
    """Rows per task: a divisor of `rows` in [most/2, most] when there is one (no partial
    tile), else `most` (the last tile stores only its valid rows)."""
    most = max(1, min(most, rows))
    for mr in range(most, (most + 1) // 2 - 1, -1):
        if rows % mr == 0:
            return mr
    return most


def _plan(rows: int, bs: int, info: CpuInfo) -> tuple[int, int, int, int]:
    """(lanes, vectors per task, tasks per block, rows per tile). A block of several vectors is
    one task when its row tile divides the rows; else (MobileNetV2's 49 pixels in tiles of 6)
    each vector of the block is a task of its own, with the taller tile of one vector."""
    vl = min(bs, info.lanes)
    if bs % vl:
        vl = 1
    vecs = bs // vl
    mr = row_tile(rows, max(1, info.accumulators // vecs))
    narrow = row_tile(rows, info.accumulators)
    if vecs > 1 and rows % mr and rows % narrow == 0:
        return vl, 1, vecs, narrow
    return vl, vecs, 1, mr


def bsr_kernel(spec: SparseSpec, info: CpuInfo) -> tvm.tirx.PrimFunc:
    """The vectorized kernel of `spec` for a CPU with `info`'s SIMD width and registers.

    A tile with fewer than 4 accumulators (batch-1 GEMV) would wait on the FMA latency, so the
    nonzero blocks are split round-robin over `ways` partial sums, added at the end.
    """
    x_shape, rows = spec.kernel_dims()
    k, n, bs, nnzb, nb = spec.k, spec.n, spec.block, spec.nnzb, spec.blocks
    symbolic = not isinstance(rows, int)  # any row count: whole register tiles, parallel
    vl, vecs, split, mr = _plan(1 << 30 if symbolic else rows, bs, info)
    ways = max(1, 4 // (mr * vecs))
    full = not symbolic and rows % mr == 0
    lo, hi = spec.lo, spec.hi
    loop = T.parallel if symbolic or rows * nnzb * bs >= PARALLEL_MIN_WORK else T.serial

    @T.macro
    def fma(acc, xf, values, indices, j, task, way):
        for r in T.unroll(mr):
            for u in T.unroll(vecs):
                acc[(way * mr + r) * vecs + u] = (
                    acc[(way * mr + r) * vecs + u]
                    + T.broadcast(
                        xf[T.min(task // (nb * split) * mr + r, rows - 1), indices[j]], vl
                    )
                    * values[j, T.ramp((task % split * vecs + u) * vl, 1, vl)]
                )

    @T.prim_func(private=True)
    def bsr_matmul(
        x: T.Buffer(x_shape, "float32"),
        values: T.Buffer((nnzb, bs), "float32"),
        indices: T.Buffer((nnzb,), "int32"),
        indptr: T.Buffer((nb + 1,), "int32"),
        bias: T.Buffer((n,), "float32"),
        out: T.Buffer((*x_shape[:-1], n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xf = T.decl_buffer((rows, k), "float32", data=x.data)
        of = T.decl_buffer((rows, n), "float32", data=out.data)
        tiles = (rows + mr - 1) // mr  # let-bound when symbolic
        for task in loop(tiles * nb * split):
            acc = T.decl_buffer((ways * mr * vecs,), f"float32x{vl}", scope="local")
            start = T.meta_var(indptr[task // split % nb])
            count = T.meta_var(indptr[task // split % nb + 1] - indptr[task // split % nb])
            for i in T.unroll(ways * mr * vecs):
                acc[i] = T.broadcast(T.float32(0), vl)
            for jj in range(count // ways):
                for way in T.unroll(ways):
                    fma(acc, xf, values, indices, start + jj * ways + way, task, way)
            for j in range(start + count // ways * ways, start + count):
                fma(acc, xf, values, indices, j, task, 0)
            for way in T.unroll(1, ways):
                for i in T.unroll(mr * vecs):
                    acc[i] = acc[i] + acc[way * mr * vecs + i]
            for r in T.unroll(mr):
                if full or task // (nb * split) * mr + r < rows:
                    for u in T.unroll(vecs):
                        of[
                            task // (nb * split) * mr + r,
                            T.ramp(task // split % nb * bs + (task % split * vecs + u) * vl, 1, vl),
                        ] = clamp(
                            acc[r * vecs + u]
                            + bias[
                                T.ramp(
                                    task // split % nb * bs + (task % split * vecs + u) * vl, 1, vl
                                )
                            ],
                            lo,
                            hi,
                            vl,
                        )

    return bsr_matmul.with_attr(RECIPE_ATTR, spec.text())
