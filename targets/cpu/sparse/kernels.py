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

from graphopt.sparse_ops import SparseSpec, epilogue, kernel_func
from graphopt.targets.cpu.schedules.common import CpuInfo

# Kernels with fewer multiply-adds than this run serially: waking the runtime's sleeping
# workers costs ~10 us a parallel region (see int8's PARALLEL_MIN_WORK); 512K fp32
# multiply-adds are ~25 us on one core. The 70%-sparse MiniLM GEMV ran 3x faster than dense on
# one thread and slower than dense on two.
PARALLEL_MIN_WORK = 1 << 19


def row_tile(rows: int, most: int) -> int:
    """Rows per task: a divisor of `rows` in [most/2, most] when there is one (no partial
    tile), else the fewest tiles of at most `most` rows, evened out (49 rows: 4 tiles of 13,
    not of 16; the last tile overlaps the one before and stores only its own rows)."""
    most = max(1, min(most, rows))
    for mr in range(most, (most + 1) // 2 - 1, -1):
        if rows % mr == 0:
            return mr
    return -(-rows // -(-rows // most))


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
    dims = spec.kernel_dims()
    rows = dims[1]
    bs, nb = spec.block, spec.blocks
    symbolic = not isinstance(rows, int)  # any row count: whole register tiles, parallel
    vl, vecs, split, mr = _plan(1 << 30 if symbolic else rows, bs, info)
    ways = max(1, 4 // (mr * vecs))
    full = not symbolic and rows % mr == 0
    loop = T.parallel if symbolic or rows * spec.nnzb * bs >= PARALLEL_MIN_WORK else T.serial

    # The row a tile's row r reads. A static tile reads rows row0 .. row0 + mr - 1, the last
    # tile moved back to end at the last row (it stores only the rows that are its own): the
    # rows are then constant offsets from one base, one broadcast-FMA instruction each. A
    # symbolic row count may be below mr, so there each row is clamped on its own.
    shift_last = not symbolic and not full and rows >= mr

    def row_of(task, r):
        first = task // (nb * split) * mr
        if full:
            return first + r
        if shift_last:
            return T.min(first, rows - mr) + r
        return T.min(first + r, rows - 1)

    @T.macro
    def fma(acc, xf, values, indices, j, task, way):
        for r in T.unroll(mr):
            for u in T.unroll(vecs):
                acc[(way * mr + r) * vecs + u] = (
                    acc[(way * mr + r) * vecs + u]
                    + T.broadcast(xf[row_of(task, r), indices[j]], vl)
                    * values[j, T.ramp((task % split * vecs + u) * vl, 1, vl)]
                )

    @T.macro
    def body(xf, values, indices, indptr, bias, residual, of):
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
                if (
                    full
                    or (shift_last and row_of(task, r) >= task // (nb * split) * mr)
                    or (not shift_last and task // (nb * split) * mr + r < rows)
                ):
                    for u in T.unroll(vecs):
                        col = T.meta_var(task // split % nb * bs + (task % split * vecs + u) * vl)
                        of[row_of(task, r), T.ramp(col, 1, vl)] = epilogue(
                            acc[r * vecs + u], spec, bias, residual, row_of(task, r), col, vl
                        )

    attrs = {"tirx.noalias": True, "tirx.is_scheduled": True}
    return kernel_func(body, spec, dims, attrs)
