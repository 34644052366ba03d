"""Passes owned by the CPU targets: they generate or schedule CPU code, so they live here and
run only in a CPU target's stages. One pass per file; the file stem is the registered name.
"""

from __future__ import annotations

import importlib
import pkgutil

if __name__ != "graphopt.targets.cpu.passes":
    raise ImportError("import graphopt.targets.cpu.passes, not the top-level targets/ folder")

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
