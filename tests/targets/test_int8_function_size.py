"""No function over 80 lines in the int8 graph pass and the CPU int8 kernel generators."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    "passes/lower_int8.py",
    "passes/_int8_reference.py",
    "passes/_int8_pad.py",
    "graphopt/int8_ops.py",
    "targets/cpu/passes/materialize_int8.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "targets/cpu/int8").glob("*.py")),
]
LIMIT = 80


def test_int8_functions_fit_on_a_screen():
    long = []
    for name in FILES:
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)
