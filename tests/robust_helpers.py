"""Helpers of the robustness tests (tests/robust): CLI results and one-line user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def assert_user_error(self, *words: str) -> str:
        """Exit 2, no traceback, stderr exactly one `error: ...` line naming `words`."""
        assert "Traceback" not in self.err, self.err[-3000:]
        assert self.rc == 2, (self.rc, self.err[-3000:])
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err
        for word in words:
            assert word in lines[0], f"{word!r} not in {lines[0]!r}"
        return lines[0]


def run_process(*args, timeout: float = 120, cwd=None) -> Result:
    """`python -m graphopt.cli ARGS` in a fresh process (what a user's shell sees)."""
    env = {k: v for k, v in os.environ.items() if k != "GRAPHOPT_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "graphopt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**env, "GRAPHOPT_NUM_THREADS": "1"},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
