"""Fixtures of the robustness tests: the CLI in-process."""

from __future__ import annotations

import traceback

import pytest
from robust_helpers import Result

from graphopt import cli


@pytest.fixture
def run_cli(capsys):
    """run_cli(*args) -> Result of graphopt.cli.main(args), in-process."""

    def call(*args) -> Result:
        capsys.readouterr()
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - what the real CLI would print
            captured = capsys.readouterr()
            return Result(1, captured.out, captured.err + traceback.format_exc())
        captured = capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    return call
