"""Helpers shared by pass files (a pass never imports another pass)."""

from __future__ import annotations

import tvm

from graphopt import _tvm
from graphopt.pass_infra import PassResult


def call_count(mod: tvm.IRModule, op_name: str | None = None) -> int:
    """Number of calls in the module's Relax functions (of one operator, if given)."""
    counts = _tvm.op_counts(mod)
    return counts.get(op_name, 0) if op_name else sum(counts.values())


def apply_tvm_pass(mod: tvm.IRModule, tvm_pass: tvm.transform.Pass, **stats: int) -> PassResult:
    """Run a TVM pass; `modified` is decided by structural comparison, never assumed."""
    new = tvm_pass(mod)
    return PassResult(new, not _tvm.structural_equal(new, mod), stats)
