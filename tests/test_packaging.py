"""The wheel lists its packages by hand (passes/ and targets/ are renamed on install): a
sub-package missing from pyproject.toml works in an editable install and is absent from a
real one, so the list is checked against the source tree."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
RENAMED = {"passes": "graphopt.passes", "targets": "graphopt.targets"}


def _source_packages() -> set[str]:
    found = set()
    for top in ("graphopt", *RENAMED):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            found.add(".".join((RENAMED.get(parts[0], parts[0]), *parts[1:])))
    return found


def test_every_source_package_is_in_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert _source_packages() - listed == set()
    assert listed - _source_packages() == set()
