"""graphopt's passes, one per file; the file stem is the registered (kebab-case) name.

Importing this package registers every pass. Import it as `graphopt.passes`, never as the
top-level `passes` folder (that would load each module twice and register passes twice).
"""

from __future__ import annotations

import importlib
import pkgutil

if __name__ != "graphopt.passes":
    raise ImportError("import graphopt.passes, not the top-level passes/ folder")

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
