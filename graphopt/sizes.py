"""How many bytes of an artifact's library are weights, by dtype, read from the file itself.

`tvm.compile` keeps every tensor constant of the Relax graph in the VM executable's constant
pool, which `export_library` serializes into the shared library's embedded blob in TVM's tensor
format (`magic u64, reserved u64, device i32 x2, ndim i32, dtype u8 code/u8 bits/u16 lanes,
shape i64 x ndim, nbytes i64, data`). Scanning the library for that header counts exactly the
weights a deployment ships, without loading TVM or the model. Everything else in the file (machine
code, symbols, the VM bytecode, shape tuples) is "code". Scalars a kernel inlined as immediates
are not counted (a few bytes).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path

TENSOR_MAGIC = struct.pack("<Q", 0xDD5E40F096B4A13F)
_HEAD = struct.Struct("<QiiiBBH")  # reserved, device type, device id, ndim, dtype code/bits/lanes
_CODES = {0: "int", 1: "uint", 2: "float", 4: "bfloat", 5: "float8", 6: "bool"}
_MAX_NDIM = 16
LARGE_BYTES = 64 << 10  # an fp32 constant this large is a layer's weights or a table, not a
# per-channel scale / bias / norm parameter (those are at most a few thousand elements)


@dataclass(frozen=True)
class Constant:
    """One tensor constant of the library: dtype, shape, bytes and file offset."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int  # of the header in the file
    end: int  # first byte after the data

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class WeightSizes:
    """The weights (tensor constants) of one library file, and the rest of it."""

    library_bytes: int
    constants: tuple[Constant, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(c.nbytes for c in self.constants)

    @property
    def code_bytes(self) -> int:
        return self.library_bytes - self.weight_bytes

    def by_dtype(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for c in self.constants:
            counts[c.dtype] += c.nbytes
        return dict(counts.most_common())

    def largest(self, n: int = 5) -> list[Constant]:
        return sorted(self.constants, key=lambda c: -c.nbytes)[:n]

    def breakdown(self, large: int = LARGE_BYTES) -> dict[str, int]:
        """Bytes by what the constants most likely are; the names are gone, dtype and rank tell:
        int8 (quantized weights, embedding tables); int32 of rank >= 2 (integer kernels' weight
        panels, int8 values packed into 32-bit words: 1 byte each with 4-byte words, more when
        the scheme widens them); int32 vectors (biases and zero-point corrections); fp32 at
        least `large` bytes (fp32 layers, tables); smaller fp32 (scales, biases, norms)."""
        keys = ("int8", "int32 packed", "int32 vectors", "fp32 large", "fp32 small", "other")
        out = dict.fromkeys(keys, 0)
        for c in self.constants:
            if c.dtype == "int8":
                key = "int8"
            elif c.dtype == "int32":
                key = "int32 packed" if len(c.shape) >= 2 else "int32 vectors"
            elif c.dtype == "float32":
                key = "fp32 large" if c.nbytes >= large else "fp32 small"
            else:
                key = "other"
            out[key] += c.nbytes
        return out

    def to_json(self, largest: int = 5) -> dict:
        return {
            "library_bytes": self.library_bytes,
            "weight_bytes": self.weight_bytes,
            "code_bytes": self.code_bytes,
            "constants": len(self.constants),
            "weight_bytes_by_dtype": self.by_dtype(),
            "breakdown": self.breakdown(),
            "largest": [{"tensor": c.describe(), "bytes": c.nbytes} for c in self.largest(largest)],
            "largest_fp32": [
                {"tensor": c.describe(), "bytes": c.nbytes}
                for c in self.largest(len(self.constants))
                if c.dtype == "float32"
            ][:largest],
        }

    def summary(self) -> str:
        """One line for `graphopt report` / compile output."""
        parts = ", ".join(f"{d} {_size(b)}" for d, b in self.by_dtype().items())
        return (
            f"weights {_size(self.weight_bytes)} in {len(self.constants)} constants"
            f" ({parts or 'none'}), code and metadata {_size(self.code_bytes)}"
        )


def library_weights(path: str | Path) -> WeightSizes:
    """Scan a compiled library (`model.so`) for its serialized tensor constants."""
    data = Path(path).read_bytes()
    found: list[Constant] = []
    pos = data.find(TENSOR_MAGIC)
    while pos >= 0:
        const = _parse(data, pos)
        if const is not None:
            found.append(const)
            pos = data.find(TENSOR_MAGIC, const.end)
        else:
            pos = data.find(TENSOR_MAGIC, pos + 1)
    return WeightSizes(len(data), tuple(found))


def _parse(data: bytes, pos: int) -> Constant | None:
    """The constant whose header starts at `pos`, or None when the bytes are not one."""
    start = pos + len(TENSOR_MAGIC)
    if start + _HEAD.size > len(data):
        return None
    reserved, _dev_type, _dev_id, ndim, code, bits, lanes = _HEAD.unpack_from(data, start)
    if reserved != 0 or not 0 <= ndim <= _MAX_NDIM or code not in _CODES or lanes < 1:
        return None
    at = start + _HEAD.size
    if at + 8 * ndim + 8 > len(data):
        return None
    shape = struct.unpack_from(f"<{ndim}q", data, at)
    (nbytes,) = struct.unpack_from("<q", data, at + 8 * ndim)
    if any(d < 0 for d in shape) or nbytes != (prod(shape) * bits * lanes + 7) // 8:
        return None
    end = at + 8 * ndim + 8 + nbytes
    if end > len(data):
        return None
    dtype = f"{_CODES[code]}{bits}" + (f"x{lanes}" if lanes > 1 else "")
    if code == 6:
        dtype = "bool"
    return Constant(dtype, tuple(shape), nbytes, pos, end)


def _size(n: int) -> str:
    if n < 1 << 10:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"
