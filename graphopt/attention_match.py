"""The fused attention kernel (`fuse`'s `graphopt.attention` group) recognized by its blocks.

After FuseTIR the group is one PrimFunc of a dozen root blocks. Schedule rules of every target
recognize it by its block *structure*, not by names: exactly four reductions, in order

    scores  S[.., i, j] += A[.., i, k] * B[.., k, j]      (Q K^T; scale / transposes inlined)
    max     M[.., i]     = max(M[.., i], f(S)[.., i, j])   (f: mask add, casts, or nothing)
    sum     Z[.., i]    += E[.., i, j]                     (E = exp(f(S) - M): a spatial block)
    output  O[.., i, d] += P[.., i, j] * V[.., j, d]      (P = E / Z [+ NaN guard] [cast])

with every other block spatial, and one block writing the function's output (the output
matmul itself, or the head merge after it). Spatial blocks on the way to P may write further
outputs (`extras`: the attention probabilities of models that return them). Anything else:
`match_attention` returns None. Also here: the output block's row loops (batch, head, query
row), which every target's schedule splits into its units of work.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from graphopt import tir_blocks as tb


@dataclass
class Matmul:
    view: tb.BlockView
    a: tvm.ir.TensorLoad  # A[.., i, k]
    b: tvm.ir.TensorLoad  # B[.., k, j]


@dataclass
class AttentionBlocks:
    """The blocks the schedule places (BlockViews of the root scope)."""

    scores: Matmul
    max: tb.BlockView
    exp: tb.BlockView
    sum: tb.BlockView
    probs: tb.BlockView  # the block writing the output matmul's A operand
    output: Matmul
    out: tb.BlockView  # the block writing the function's output
    k_t: tb.BlockView | None  # the block writing the scores' B operand (None: a parameter)
    extras: list[tb.BlockView]  # spatial blocks before the output matmul writing outputs


def _matmul(view: tb.BlockView) -> Matmul | None:
    """`C[.., i, j] += A[.., i, k] * B[.., k, j]` with k the block's one reduction iterator."""
    store = view.store()
    if store is None or view.kinds.count("R") != 1 or not view.kinds.endswith("R"):
        return None
    operands = tb.product_operands(store)
    if operands is None:
        return None
    k = view.block.iter_vars[-1].var
    col = store.indices[-1]
    if not isinstance(col, tirx.Var) or len(store.indices) < 2:
        return None
    a = b = None
    for load in operands:
        idx = list(load.indices)
        if len(idx) < 2:
            return None
        if idx[-1].same_as(k) and a is None:
            a = load
        elif idx[-2].same_as(k) and idx[-1].same_as(col) and b is None:
            b = load
    if a is None or b is None:
        return None
    return Matmul(view, a, b)


def _reduce_with(view: tb.BlockView, op) -> tvm.ir.TensorLoad | None:
    """`C[..] = op(C[..], X[..])` over the last iterator -> the load of X."""
    store = view.store()
    if store is None or view.kinds.count("R") != 1 or not view.kinds.endswith("R"):
        return None
    value = store.value
    if not isinstance(value, op):
        return None
    for acc, other in ((value.a, value.b), (value.b, value.a)):
        if isinstance(acc, tvm.ir.TensorLoad) and acc.source.same_as(store.buffer):
            loads = tb.buffer_loads(other)
            if len(loads) == 1 and isinstance(other, tvm.ir.TensorLoad):
                return other
    return None


def _calls(expr, name: str) -> bool:
    hit: list = []

    def visit(e):
        if isinstance(e, tvm.ir.Call) and str(getattr(e.op, "name", "")) == name:
            hit.append(e)

    tb.walk(expr, visit)
    return bool(hit)


def match_attention(sch: Schedule, func: tirx.PrimFunc) -> AttentionBlocks | None:
    """The attention blocks of `func`, or None when its structure is not attention's."""
    views = tb.root_blocks(sch)
    writer = {}
    for v in views:
        if len(v.block.writes) != 1:
            return None
        writer[v.block.writes[0].source] = v
    reductions = [v for v in views if "R" in v.kinds]
    if len(reductions) != 4 or any(not (v.is_spatial or v.is_reduction) for v in views):
        return None
    scores, output = _matmul(reductions[0]), _matmul(reductions[3])
    max_in = _reduce_with(reductions[1], tirx.Max)
    sum_in = _reduce_with(reductions[2], tirx.Add)
    if scores is None or output is None or max_in is None or sum_in is None:
        return None
    mx, sm = reductions[1], reductions[2]
    exp = writer.get(sum_in.source)
    probs = writer.get(output.a.source)
    if exp is None or probs is None or not exp.is_spatial or not probs.is_spatial:
        return None
    exp_store = exp.store()
    # exp: libm's (tirx.exp) or fast-softmax's polynomial, which reads x - max from a block
    # of its own (inlined like the other spatial producers).
    if exp_store is None or not (
        _calls(exp_store.value, "tirx.exp") or _calls(exp_store.value, "tirx.reinterpret")
    ):
        return None
    # Data flow: scores -> max -> exp -> sum -> probabilities -> output matmul.
    deps = _ancestors(views, writer)
    m_buf = mx.block.writes[0].source
    z_buf = sm.block.writes[0].source
    if scores.view.name not in deps[mx.name] or m_buf not in _read_buffers_deep(exp, writer):
        return None
    if sm.name not in deps[probs.name] or z_buf not in _read_buffers_deep(probs, writer):
        return None
    params = set(func.params)
    outs = [v for v in views if v.block.writes[0].source in params]
    # The output: the output matmul or a spatial block after it; other outputs must be
    # spatial blocks the output matmul depends on (the probabilities, returned).
    last = [v for v in outs if v is output.view or output.view.name in deps[v.name]]
    if len(last) != 1:
        return None
    out = last[0]
    if out is not output.view and not out.is_spatial:
        return None
    extras = [v for v in outs if v is not out]
    if any(not v.is_spatial or v.name not in deps[output.view.name] for v in extras):
        return None
    k_t = writer.get(scores.b.source)
    if k_t is not None and not k_t.is_spatial:
        return None
    return AttentionBlocks(scores, mx, exp, sm, probs, output, out, k_t, extras)


def _read_buffers(view: tb.BlockView) -> set:
    return {r.source for r in view.block.reads}


def _read_buffers_deep(view: tb.BlockView, writer: dict) -> set:
    """Buffers read by a block or by the spatial blocks feeding it (what inlining brings in)."""
    seen, todo = set(), [view]
    while todo:
        v = todo.pop()
        for buf in _read_buffers(v):
            if buf in seen:
                continue
            seen.add(buf)
            w = writer.get(buf)
            if w is not None and w.is_spatial:
                todo.append(w)
    return seen


def _ancestors(views, writer) -> dict[str, set[str]]:
    """Block name -> names of every block it (transitively) reads from."""
    out: dict[str, set[str]] = {}
    for v in views:  # root blocks are in data-flow order
        acc: set[str] = set()
        for buf in _read_buffers(v):
            w = writer.get(buf)
            if w is not None and w.name != v.name:
                acc |= {w.name} | out.get(w.name, set())
        out[v.name] = acc
    return out


def loop_extent(sch: Schedule, loop) -> int:
    value = tb.const_int(sch.get(loop).extent)
    if value is None:
        raise ValueError("dynamic loop extent")
    return value


def row_loops(sch: Schedule, blocks: AttentionBlocks) -> list:
    """The output block's leading loops that do not index the output matmul's column (d)."""
    out = blocks.out
    if out.name == blocks.output.view.name:
        return list(out.loops[:-2])  # [.., i] of [.., i, d, k]
    d_buf = blocks.output.view.block.writes[0].source
    loads = [ld for ld in tb.buffer_loads(sch.get(out.rv).body.value) if ld.source.same_as(d_buf)]
    if not loads:
        raise ValueError("output block does not read the output matmul")
    analyzer = tvm.sym.Analyzer()  # tvm.arith in older TVM
    for iv in sch.get(out.rv).iter_vars:
        analyzer.bind(iv.var, iv.dom)
    col_vars: set = set()
    for ld in loads:
        col_vars |= tb.free_vars(analyzer.simplify(ld.indices[-1]))
    # Each loop binds one iterator directly (unit iterators may have lost their loop).
    bound = list(zip(tb.binding(sch, out), sch.get(out.rv).iter_vars))
    prefix = []
    for loop in out.loops:
        loop_var = sch.get(loop).loop_var
        ivs = [iv.var for value, iv in bound if value.same_as(loop_var)]
        if not ivs and loop_extent(sch, loop) == 1:
            prefix.append(loop)  # a unit loop whose iterator was bound to 0
            continue
        if len(ivs) != 1:
            raise ValueError("output block is not a plain loop nest")
        if any(ivs[0].same_as(v) for v in col_vars):
            break
        prefix.append(loop)
    if not prefix:
        raise ValueError("no row loop outside the head dimension")
    return prefix


def heads_outside_rows(sch: Schedule, out_rv, prefix: list, head_dim: int) -> list:
    """Head merge (`[.., rows, heads * d]`): split heads off the merged loop and put them
    outside the rows, so the parallel tasks are (batch, head, row block), not (batch, row
    block) with every head inside."""
    loops = list(sch.get_loops(out_rv))
    if len(loops) != len(prefix) + 1:
        return prefix
    merged = loops[-1]
    extent = loop_extent(sch, merged)
    if extent % head_dim or extent == head_dim:
        return prefix
    heads, _ = sch.split(merged, [None, head_dim])
    sch.reorder(heads, prefix[-1])
    return [*prefix[:-1], heads, prefix[-1]]
