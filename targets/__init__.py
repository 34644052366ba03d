"""Compilation targets, one per file; importing this package registers them all."""

from __future__ import annotations

import importlib
import pkgutil

if __name__ != "graphopt.targets":
    raise ImportError("import graphopt.targets, not the top-level targets/ folder")

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
