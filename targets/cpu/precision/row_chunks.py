"""How a 16-bit matmul kernel splits its rows into parallel tasks (shared by the fp32-FMA and
the vdpbf16ps kernel): chunks of whole register tiles of MR rows, each task one chunk of one
panel group. A static row count is split evenly (49 rows in chunks of 30 and 19, not 48 and
1); a symbolic one in chunks of the kernel's maximum. A task runs only the tiles of its chunk
that hold a row, so neither a short last chunk nor a one-token call computes a whole chunk
of clamped rows."""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T


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


def row_chunks(rows, mr: int, max_chunk: int) -> RowChunks:
    """Chunks of at most `max_chunk` rows (a multiple of `mr`) for `rows`."""
    if not isinstance(rows, int):
        return RowChunks(rows, mr, max_chunk)
    count = -(-rows // max_chunk)
    per_task = -(-rows // count)
    return RowChunks(rows, mr, -(-per_task // mr) * mr)
