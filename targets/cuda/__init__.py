"""The CUDA target (NVIDIA GPUs): options and stages (target.py), the toolchain that compiles
kernels ahead of time into fatbins (toolchain.py, stub/), reading them back (fatbin.py), its
passes (passes/: schedule-cuda, mixed-precision, cuda-graphs, materialize-int8-cuda), GPU
schedule rules (schedules/) and the int8 ops' GPU kernels (int8/).

Importing this package registers the target and its passes.
"""

from __future__ import annotations

from graphopt.targets.cuda import passes as _passes  # noqa: F401  - registers the CUDA passes
from graphopt.targets.cuda import target as _target  # noqa: F401  - registers `cuda`
