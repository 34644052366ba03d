"""Block-sparse int8 matmuls: the int8 matmul of `kernels.py` over the nonzero weight blocks only.

A block is what one dot instruction multiplies: `lanes` output channels times `kpack` input
channels, one 32-bit word per lane (vnni 16 x 4, avx2 8 x 2, sdot 4 x 4). The weights are
stored as BSR over words:

    values   int32 [nnzb, lanes]        the block's words (kpack int8 / int16 values each)
    indices  int32 [nnzb]               the block's word index along K
    indptr   int32 [N_pad / lanes + 1]  each output vector's blocks

A task packs its rows into words as the dense kernel does (`kernels.task_loop`), then for
each output vector runs a register tile of mr rows over the vector's nonzero blocks: per block
one weight load and, per row, one dot instruction reading the row's word as a broadcast from
memory. The epilogue is the dense kernel's. Integer sums are exact, so the outputs are the
dense kernel's bit for bit on the same zeros; time is proportional to the nonzero blocks.

Which layers take it is `sparse_rules.py`'s decision; `materialize.py` packs the constants.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.sparse.kernels import row_tile

# A layer takes the sparse kernel when at most this fraction of its blocks hold a nonzero and
# it has at least MIN_WEIGHTS weights. The sparse kernel runs at about the dense kernel's rate
# per nonzero block, so it breaks even near 0.8-0.9 on the deep reductions; the batch-1 GEMV
# (MobileNetV2's classifier, 1280 -> 1000) sets the threshold. Measured here (2 threads):
# vnni on Zen 4 1.14x at 0.5, 0.86x at 0.7; avx2 (compiled for znver3) 1.14x at 0.4, 0.81x at
# 0.6. Schemes not measured (sdot, generic) take the lower one.
MAX_DENSITY = {"vnni": 0.6, "avx2": 0.5}
DEFAULT_MAX_DENSITY = 0.5
MIN_WEIGHTS = 1024


def sparse_plan(spec: K.MatmulSpec, isa: K.Isa) -> K.MatmulPlan:
    """One output vector per tile column (nr = 1), so the tile is as tall as the registers
    allow, evened out over the rows (49 pixels: 3 tiles of 17, not 3 of 24)."""
    symbolic = isinstance(spec.rows, str)
    mr = isa.accumulators if symbolic else row_tile(spec.rows, isa.accumulators)
    rows_pad = 0 if symbolic else -(-spec.rows // mr) * mr
    kwords = -(-spec.k // isa.kpack)
    return K.MatmulPlan(isa, mr, 1, kwords, rows_pad, -(-spec.n // isa.lanes) * isa.lanes)


def weight_words(w: np.ndarray, isa: K.Isa) -> np.ndarray:
    """[K, N] int8 -> [N_pad / lanes, kwords, lanes] int32 words (a block per [vector, kq])."""
    k, n = w.shape
    n_pad = -(-n // isa.lanes) * isa.lanes
    padded = np.zeros((n_pad, k), np.int32)
    padded[:n] = w.T
    words = K.pack_words(padded, isa.kpack)  # [n_pad, kwords]
    return np.ascontiguousarray(words.reshape(n_pad // isa.lanes, isa.lanes, -1).transpose(0, 2, 1))


def block_density(w: np.ndarray, isa: K.Isa) -> float:
    """The fraction of `isa`'s weight blocks that hold a nonzero (what the kernel computes)."""
    return float((weight_words(w, isa) != 0).any(axis=2).mean())


def pack_bsr(w: np.ndarray, isa: K.Isa) -> list[np.ndarray]:
    """[K, N] int8 -> values, indices, indptr. An all-zero weight keeps one unused zero block
    (a buffer of zero rows is not passed)."""
    words = weight_words(w, isa)
    nonzero = (words != 0).any(axis=2)  # [vectors, kwords]
    values = words[nonzero]
    indices = np.nonzero(nonzero)[1].astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))]).astype(np.int32)
    if not len(values):
        values, indices = np.zeros((1, isa.lanes), np.int32), np.zeros(1, np.int32)
    return [np.ascontiguousarray(values), indices, indptr]


def _sparse_tiles(g, isa: K.Isa, spec: K.MatmulSpec, ep: K.Epilogue) -> K.Gemm:
    """TIR macro: one task's output vectors, each over its nonzero blocks. A tile of fewer
    than 4 rows (batch-1 GEMV) would wait on the dot's latency: its blocks are dealt
    round-robin to `ways` partial sums, added before the epilogue."""
    mr, lanes = g.mr, g.lanes
    ways = max(1, 4 // mr)
    store = K.tile_store(g, spec, ep)

    @T.macro
    def dot(acc, words, weights, j, way):
        for r in T.unroll(mr):
            acc[way * mr + r] = isa.dot(
                acc[way * mr + r],
                T.broadcast(words[r, weights[1][j]], lanes),
                weights[0][j, T.ramp(0, 1, lanes)],
            )

    @T.macro
    def gemm(weights, words, acc, tail, of, corr, scale, fbias, xs, rs, m0, c0, chunk):
        for c in range(c0, T.min(c0 + chunk, g.col_tiles)):
            start = T.meta_var(weights[2][c])
            count = T.meta_var(weights[2][c + 1] - weights[2][c])
            for i in T.unroll(ways * mr):
                acc[i] = T.broadcast(T.int32(0), lanes)
            for jj in range(count // ways):
                for way in T.unroll(ways):
                    dot(acc, words, weights, start + jj * ways + way, way)
            for j in range(count % ways):
                dot(acc, words, weights, start + count // ways * ways + j, 0)
            for way in T.unroll(1, ways):
                for i in T.unroll(mr):
                    acc[i] = acc[i] + acc[way * mr + i]
            store(acc, tail, of, corr, scale, fbias, xs, rs, m0, c)

    return K.Gemm(gemm, ways)


def sparse_matmul_kernel(
    spec: K.MatmulSpec,
    plan: K.MatmulPlan,
    shape: tuple,
    zp: int,
    ep: K.Epilogue,
    density: float,
    window: K.ConvSpec | None = None,
) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, values, indices, indptr, corr, scale, fbias, xs, out): `matmul_kernel`
    (see there for x, `shape`, `zp`, `window` and the per-channel operands) with the weights
    as BSR words (`pack_bsr`, any number of blocks). `density` (the largest of the layers
    sharing the kernel) only decides whether the tasks are worth running in parallel."""
    parts = K.kernel_parts(spec, plan, shape, zp, window)
    g = parts.g
    rows = g.rows
    work = K.PARALLEL_MIN_WORK if not isinstance(rows, int) else rows * g.k * g.n * density
    tasks = K.task_loop(parts, ep, _sparse_tiles(g, plan.isa, spec, ep), int(work))
    return K.matmul_func(parts, plan, ep, tasks, sparse=True)
