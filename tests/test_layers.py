"""Dependencies point one way: core <- passes <- targets <- driver (docs/ARCHITECTURE.md).

Every import statement in graphopt/, passes/ and targets/ (top level or inside a function) is
read with `ast`; an import of a higher layer is a back edge and fails the test. Registries load
the layers above them by name (importlib), which is how plugins are found, not a dependency.
Also: a pass never imports another pass module or another module's private names, and nothing
below the driver imports the test helpers (graphopt.testing).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"graphopt": "graphopt", "passes": "graphopt.passes", "targets": "graphopt.targets"}

# The driver: what users call (CLI, compile, tune, report) and the test helpers.
DRIVER = {
    "graphopt",  # graphopt/__init__.py: the public API (compile, load)
    "graphopt.__main__",
    "graphopt.cli",
    "graphopt.compiler",
    "graphopt.report",
    "graphopt.testing",
}
DRIVER_PACKAGES = ("graphopt.tuning",)  # tune, its database, record selection, RPC
RANK = {"core": 0, "passes": 1, "targets": 2, "driver": 3}


def layer(module: str) -> str:
    if module in DRIVER or any(module.startswith(p) for p in DRIVER_PACKAGES):
        return "driver"
    if module == "graphopt.passes" or module.startswith("graphopt.passes."):
        return "passes"
    if module == "graphopt.targets" or module.startswith("graphopt.targets."):
        return "targets"
    return "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every import in the file, resolved."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            modules = [n.name for n in node.names if _is_module(f"{base}.{n.name}")]
            names = [n.name for n in node.names if n.name not in modules]
            # `from graphopt import passes` imports the module graphopt.passes, not graphopt
            if names:
                out.append((node.lineno, base, names))
            out += [(node.lineno, f"{base}.{m}", []) for m in modules]
    return [(line, mod, names) for line, mod, names in out if mod.startswith("graphopt")]


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "graphopt":
        return False
    if len(parts) > 1 and parts[1] in ("passes", "targets"):
        folder = ROOT / parts[1] / Path(*parts[2:]) if len(parts) > 2 else ROOT / parts[1]
    else:
        folder = ROOT / "graphopt" / Path(*parts[1:]) if len(parts) > 1 else ROOT / "graphopt"
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def back_edges() -> list[str]:
    found = []
    for path in sources():
        me = module_name(path)
        for line, other, _names in imports(path):
            if RANK[layer(other)] > RANK[layer(me)]:
                found.append(f"{path.relative_to(ROOT)}:{line} {layer(me)} {me} -> {other}")
    return found


def test_dependencies_point_one_way():
    assert back_edges() == []


def test_no_module_below_the_driver_imports_the_test_helpers():
    bad = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in sources()
        if layer(module_name(p)) != "driver"
        for line, other, _ in imports(p)
        if other == "graphopt.testing"
    ]
    assert bad == []


def _is_pass_module(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return (
        module.startswith("graphopt.passes.") or module.startswith("graphopt.targets.cpu.passes.")
    ) and not last.startswith("_")


def test_passes_never_import_other_passes_or_their_privates():
    bad = []
    for path in sources():
        me = module_name(path)
        if not _is_pass_module(me):
            continue
        for line, other, names in imports(path):
            if other != me and _is_pass_module(other):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the pass {other}")
            private = [n for n in names if n.startswith("_")]
            if private and other != me:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {other}.{private}")
    assert bad == []


@pytest.mark.parametrize(
    "source,expected",
    [
        ("from graphopt.targets.cpu import schedules\n", "graphopt.targets.cpu.schedules"),
        ("from ... import targets\n", "graphopt.targets"),
        ("def f():\n    from ...passes import fuse\n", "graphopt.passes.fuse"),
    ],
)
def test_the_check_sees_a_back_edge(tmp_path, monkeypatch, source, expected):
    """The scanner resolves absolute and relative imports (so the main test can fail)."""
    fake = ROOT / "graphopt" / "compress" / "common" / "layers.py"
    monkeypatch.setattr(type(fake), "read_text", lambda self, *a, **k: source)
    found = {mod for _line, mod, _names in imports(fake)}
    assert expected in found
    assert RANK[layer(expected)] > RANK[layer(module_name(fake))]
