"""How a 16-bit matmul kernel splits its rows into parallel tasks (shared by the fp32-FMA and
the vdpbf16ps kernel): chunks of whole register tiles of MR rows, each task one chunk of one
panel group. A static row count is split evenly (49 rows in chunks of 30 and 19, not 48 and
1); a symbolic one in chunks of the kernel's maximum. A task runs only the tiles of its chunk
that hold a row, so neither a short last chunk nor a one-token call computes a whole chunk
of clamped rows."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from graphopt.targets.cpu.schedules.common import cpu_info


@dataclass(frozen=True)
class RowChunks:
    rows: object  # int, or a TIR expression for symbolic rows
    mr: int  # rows per register tile
    chunk: int  # rows per task, a multiple of mr

    @property
    def static(self) -> bool:
        return isinstance(self.rows, int)

    @property
    def count(self):
        return (self.rows + self.chunk - 1) // self.chunk

    @property
    def tiles(self) -> int:
        return self.chunk // self.mr

    def first_row(self, index, tile):
        """The first row of register tile `tile` of chunk `index`."""
        return index * self.chunk + tile * self.mr

    def task_tiles(self, index):
        """Register tiles of chunk `index` that hold a row."""
        if self.static and self.rows % self.chunk == 0:
            return self.tiles
        return T.min(self.tiles, (self.rows - index * self.chunk + self.mr - 1) // self.mr)


def target_threads() -> int:
    """The threads a kernel built now runs on: the current target's cores (1 unknown)."""
    info = cpu_info(tvm.target.Target.current(allow_none=True))
    return info.cores if info is not None else 1


def row_chunks(rows, mr: int, max_chunk: int, groups: int = 1, threads: int = 1) -> RowChunks:
    """Chunks of at most `max_chunk` rows (a multiple of `mr`) for `rows`; `groups` tasks
    (panel groups) per chunk, run on `threads` threads: more chunks (up to four times the
    fewest) only where that takes at least 2% off the register tiles of the busiest thread
    (each task reloads its panels)."""
    if not isinstance(rows, int):
        return RowChunks(rows, mr, max_chunk)
    fewest = -(-rows // max_chunk)
    per_task = -(-rows // fewest)
    chunk = -(-per_task // mr) * mr
    if threads <= 1:
        return RowChunks(rows, mr, chunk)
    tiles = -(-rows // mr)
    busiest = _busiest(tiles, chunk // mr, groups, threads)
    for count in range(fewest + 1, min(tiles, 4 * fewest) + 1):
        chunk_tiles = -(-tiles // count)
        if _busiest(tiles, chunk_tiles, groups, threads) < 0.98 * busiest:
            busiest, chunk = _busiest(tiles, chunk_tiles, groups, threads), chunk_tiles * mr
    return RowChunks(rows, mr, chunk)


def _busiest(tiles: int, chunk_tiles: int, groups: int, threads: int) -> int:
    """Register tiles the busiest thread runs: TVM's static split gives each thread
    ceil(tasks / threads) consecutive tasks."""
    tasks = groups * -(-tiles // chunk_tiles)
    return -(-tasks // threads) * chunk_tiles
