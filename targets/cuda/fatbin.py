"""Read the device code inside an exported library: which fatbins, which archs, PTX text.

The CUDA module TVM serializes into `model.so` carries the nvcc fatbin as is. A fatbin is a
16-byte header (magic 0xBA55ED50, version, header size, payload size) followed by entries,
each with its own header: kind (1 = PTX, 2 = ELF machine code), header size, payload size and
the SM version at byte 28. graphopt compiles with `--no-compress`, so PTX entries are plain
text. This reader needs no CUDA tools (cuobjdump is not part of every toolkit install).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from graphopt.errors import TargetError

MAGIC = 0xBA55ED50
KIND = {1: "ptx", 2: "elf"}
ZSTD = b"\x28\xb5\x2f\xfd"
# What TVM's CUDA codegen emits at the top of every kernel source: a library holding this text
# carries CUDA source to be compiled on the GPU host, not machine code.
SOURCE_MARKERS = (b'extern "C" __global__', b"#include <cuda_fp16.h>", b"__CUDACC_RTC__")


@dataclass(frozen=True)
class Entry:
    kind: str  # "ptx" or "elf"
    arch: str  # "sm_90"
    payload: bytes
    compressed: bool

    def text(self) -> str:
        return self.payload.rstrip(b"\0").decode("utf-8", "replace")


def entries(data: bytes) -> list[Entry]:
    """Every entry of every fatbin found in `data` (a library or a bare fatbin)."""
    found: list[Entry] = []
    start = data.find(struct.pack("<I", MAGIC))
    while start >= 0:
        try:
            _, _, header, size = struct.unpack_from("<IHHQ", data, start)
            found += _entries(data, start + header, start + header + size)
        except struct.error:
            size = 0
        start = data.find(struct.pack("<I", MAGIC), start + 4)
    return found


def _entries(data: bytes, offset: int, end: int) -> list[Entry]:
    out = []
    while offset + 32 <= end:
        kind, _, header, size = struct.unpack_from("<HHIQ", data, offset)
        if header == 0:
            break
        arch = struct.unpack_from("<I", data, offset + 28)[0]
        flags = struct.unpack_from("<I", data, offset + 40)[0] if header >= 48 else 0
        payload = data[offset + header : offset + header + size]
        # Flag 0x8000 marks a compressed (zstd) payload: nvcc's default without --no-compress.
        compressed = bool(flags & 0x8000) or payload[:4] == ZSTD
        out.append(Entry(KIND.get(kind, str(kind)), f"sm_{arch}", payload, compressed))
        offset += header + size
    return out


def carries_source(data: bytes) -> bool:
    return any(marker in data for marker in SOURCE_MARKERS)


def check_library(path: Path, arch: str) -> list[Entry]:
    """The library's device code entries; TargetError (one line) when it has no machine code
    for `arch` or carries CUDA source."""
    data = Path(path).read_bytes()
    found = entries(data)
    if carries_source(data):
        raise TargetError(
            f"{path.name} carries CUDA source instead of machine code (TVM's CUDA runtime did "
            "not load at build time); refusing to ship it"
        )
    if not any(e.kind == "elf" and e.arch == arch for e in found):
        have = ", ".join(sorted({f"{e.kind}:{e.arch}" for e in found})) or "no fatbin"
        raise TargetError(f"{path.name} has no {arch} machine code ({have})")
    return found


def ptx_text(path: Path) -> str:
    """All uncompressed PTX of the library, concatenated (for checks such as mma use)."""
    data = Path(path).read_bytes()
    return "\n".join(e.text() for e in entries(data) if e.kind == "ptx" and not e.compressed)
