"""What the CPU targets (x86, arm) share: stage lists, TIR lowering, target-owned passes,
schedule rules and the int8 kernel generators.

Importing this package registers the CPU passes (`targets/cpu/passes/`).
"""

from __future__ import annotations

from graphopt.targets.cpu import passes as _passes  # noqa: F401  - registers the CPU passes
