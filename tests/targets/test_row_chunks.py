"""How the 16-bit matmul kernels split rows into parallel tasks (row_chunks.py): every row in
exactly one chunk of whole register tiles, the busiest of several threads no more loaded than
needed, one thread as before; and a kernel split so stays bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from graphopt import _tvm
from graphopt import precision_ops as P
from graphopt.targets.cpu.precision import dpbf16 as D
from graphopt.targets.cpu.precision.row_chunks import _busiest, row_chunks, target_threads
from tests.targets.test_precision_dpbf16 import ZNVER4, _call, needs_bf16

SHAPES = [(196, 4, 1), (784, 8, 1), (784, 4, 1), (3136, 8, 1), (49, 4, 1), (196, 8, 2), (128, 6, 3)]


@pytest.mark.parametrize("rows,mr,groups", SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_chunks_cover_every_row_once_in_whole_tiles(rows, mr, groups, threads):
    chunks = row_chunks(rows, mr, 48, groups, threads)
    assert chunks.chunk % mr == 0 and chunks.chunk <= 48 + mr
    assert (chunks.count - 1) * chunks.chunk < rows <= chunks.count * chunks.chunk
    tiles = [chunks.task_tiles(i) for i in range(chunks.count)]
    assert sum(int(t) for t in tiles) == -(-rows // mr)


def test_one_thread_keeps_the_even_split():
    assert (row_chunks(196, 4, 48).chunk, row_chunks(196, 4, 48).count) == (40, 5)
    assert row_chunks(49, 4, 48).chunk == 28  # 28 + 21, not 48 + 1


def test_two_threads_share_a_14x14_map_evenly():
    """196 rows in 5 chunks ran 3 chunks on one thread and 2 on the other."""
    chunks = row_chunks(196, 4, 48, groups=1, threads=2)
    assert _busiest(49, chunks.chunk // 4, 1, 2) == 25  # 49 tiles: 25 + 24
    assert chunks.count % 2 == 0


def test_large_maps_keep_their_chunks():
    """More tasks only for a real gain: each task reloads its panels."""
    assert row_chunks(12544, 8, 48, 1, 2).chunk == 48


def test_threads_come_from_the_target():
    assert target_threads() == 1
    with _tvm.make_target(ZNVER4):
        assert target_threads() == 2


@needs_bf16
def test_kernel_split_for_two_threads_is_bit_exact():
    spec = P.PrecisionMatmulSpec((196, 384), 64, "bf16")
    rng = np.random.default_rng(7)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    wb = P.to_bits(rng.standard_normal((384, 64)).astype(np.float32), "bf16")
    target = _tvm.make_target(ZNVER4)
    with target:
        func = D.dpbf16_kernel(spec)
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    got = _call(lib, x, D.pack_pairs(wb, spec), spec.out_shape)
    assert np.array_equal(got, P.reference_matmul(x, wb, spec))
