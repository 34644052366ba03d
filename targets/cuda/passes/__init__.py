"""Passes owned by the CUDA target: they run only in its stages. One pass per file; the file
stem is the registered name.
"""

from __future__ import annotations

import importlib
import pkgutil

if __name__ != "graphopt.targets.cuda.passes":
    raise ImportError("import graphopt.targets.cuda.passes, not the top-level targets/ folder")

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
