"""Skip markers for the CUDA compile tests: they need nvcc and gcc, never a GPU."""

from __future__ import annotations

import shutil

import pytest

needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None or shutil.which("gcc") is None,
    reason="needs nvcc (CUDA toolkit) and gcc: the CUDA target compiles kernels ahead of time",
)
