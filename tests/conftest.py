"""Shared fixtures: generated ONNX model files, compiled artifacts cached per session, inputs.

Tests import helpers with `import model_builders`: this directory goes on sys.path here, since
pytest runs with --import-mode=importlib (no package __init__ files).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import model_builders as mb  # noqa: E402

import graphopt  # noqa: E402

# name -> builder of every generated model the tests use.
MODELS: dict[str, Callable] = {
    "cnn": mb.cnn,
    "mobilenet_block": mb.mobilenet_block,
    "mlp": mb.mlp,
    "transformer_block": mb.transformer_block,
    "dynamic_batch": mb.dynamic_batch,
    "unsupported_ops": mb.unsupported_ops,
    "shape_subgraphs": mb.shape_subgraphs,
    "shape_subgraphs_static_pads": lambda: mb.shape_subgraphs(constant_of_shape=False),
}


@pytest.fixture(scope="session")
def graphopt_compile():
    """The public `graphopt.compile` function."""
    return graphopt.compile


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Every generated model saved as <name>.onnx in one session directory."""
    root = tmp_path_factory.mktemp("models")
    return {name: Path(mb.save(build(), root / f"{name}.onnx")) for name, build in MODELS.items()}


@pytest.fixture(scope="session")
def compiled(tmp_path_factory, model_files):
    """compiled(name, opt_level, **kwargs) -> Artifact, compiled once per session and reused.

    A compile that raises is cached too and raises again, so a broken model costs one compile.
    """
    cache: dict[tuple, object] = {}
    root = tmp_path_factory.mktemp("artifacts")

    def get(name: str, opt_level: int = 2, input_shapes: dict | None = None):
        key = (name, opt_level, tuple(sorted((input_shapes or {}).items())))
        if key not in cache:
            out = root / f"{name}-O{opt_level}-{len(cache)}"
            try:
                cache[key] = graphopt.compile(
                    model_files[name], out, opt_level=opt_level, input_shapes=input_shapes
                )
            except Exception as err:  # noqa: BLE001 - re-raised for every test that asks
                cache[key] = err
        if isinstance(cache[key], Exception):
            raise cache[key]
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    """GRAPHOPT_DEBUG=1 turns CLI errors into tracebacks; tests check the normal behaviour."""
    monkeypatch.delenv("GRAPHOPT_DEBUG", raising=False)
