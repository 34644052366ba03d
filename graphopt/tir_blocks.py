"""Views of a PrimFunc's root blocks and small TIR expression helpers, for schedule rules of
any target: the Python API has no expression visitor, and rules recognize kernels by the
structure of their blocks (spatial or reduction iterators, one store, its operands).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import Schedule


def walk(expr, visit: Callable) -> None:
    """Pre-order walk over a TIR expression (the Python API has no expression visitor)."""
    visit(expr)
    if isinstance(expr, tvm.ir.TensorLoad):
        for idx in expr.indices:
            walk(idx, visit)
    elif isinstance(expr, tirx.Cast):
        walk(expr.value, visit)
    elif isinstance(expr, tvm.ir.Call):
        for arg in expr.args:
            walk(arg, visit)
    elif isinstance(expr, tirx.Select):
        for sub in (expr.condition, expr.true_value, expr.false_value):
            walk(sub, visit)
    elif isinstance(expr, tirx.Let):
        walk(expr.value, visit)
        walk(expr.body, visit)
    elif isinstance(expr, (tirx.Not,)):
        walk(expr.a, visit)
    elif hasattr(expr, "a") and hasattr(expr, "b"):
        walk(expr.a, visit)
        walk(expr.b, visit)


def buffer_loads(expr) -> list:
    """Every buffer load (`tvm.ir.TensorLoad` in 0.27) in an expression."""
    found: list = []
    walk(expr, lambda e: found.append(e) if isinstance(e, tvm.ir.TensorLoad) else None)
    return found


def free_vars(expr) -> set:
    return set(tirx.analysis.undefined_vars(expr))


def const_int(x) -> int | None:
    return int(x) if isinstance(x, tirx.IntImm) else None


def strip_cast(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


@dataclass
class BlockView:
    """A block of the root scope with its loops, iterators and single store."""

    rv: s_tir.schedule.SBlockRV
    block: s_tir.SBlock
    loops: list  # LoopRVs, outermost first

    @property
    def name(self) -> str:
        return str(self.block.name_hint)

    @property
    def kinds(self) -> str:
        return "".join(
            "S"
            if iv.iter_type == tirx.IterVar.DataPar
            else "R"
            if iv.iter_type == tirx.IterVar.CommReduce
            else "O"
            for iv in self.block.iter_vars
        )

    @property
    def is_spatial(self) -> bool:
        return set(self.kinds) <= {"S"}

    @property
    def is_reduction(self) -> bool:
        return "R" in self.kinds and set(self.kinds) <= {"S", "R"}

    def extents(self) -> list[int | None]:
        return [const_int(iv.dom.extent) for iv in self.block.iter_vars]

    def store(self) -> tirx.BufferStore | None:
        body = self.block.body
        return body if isinstance(body, tirx.BufferStore) else None


def view_of(sch: Schedule, rv) -> BlockView:
    return BlockView(rv, sch.get(rv), list(sch.get_loops(rv)))


def root_blocks(sch: Schedule) -> list[BlockView]:
    return [view_of(sch, rv) for rv in sch.get_child_blocks(sch.get_sblock("root"))]


_GET_REALIZE = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")


def binding(sch: Schedule, view: BlockView) -> list:
    return list(_GET_REALIZE(sch, view.rv).iter_values)


def product_operands(store) -> list | None:
    """`C[..] = C[..] + X * Y` (casts allowed) -> the loads of X and Y."""
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    for acc, prod in ((value.a, value.b), (value.b, value.a)):
        acc_s = strip_cast(acc)
        if not (isinstance(acc_s, tvm.ir.TensorLoad) and acc_s.source.same_as(store.buffer)):
            continue
        prod = strip_cast(prod)
        if not isinstance(prod, tirx.Mul):
            return None
        xs, ys = buffer_loads(prod.a), buffer_loads(prod.b)
        if len(xs) != 1 or len(ys) != 1:
            return None
        return [xs[0], ys[0]]
    return None
