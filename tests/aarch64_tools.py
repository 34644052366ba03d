"""One skip marker for every test that cross-compiles for aarch64 and runs it under qemu."""

from __future__ import annotations

import shutil

import pytest

from graphopt import bundle

MISSING = [
    tool
    for tool in ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump", bundle.QEMU)
    if shutil.which(tool) is None
] + ([] if bundle.QEMU_SYSROOT.is_dir() else [str(bundle.QEMU_SYSROOT)])

needs_aarch64_tools = pytest.mark.skipif(
    bool(MISSING), reason=f"needs {', '.join(MISSING)} (make test-arm installs them)"
)
