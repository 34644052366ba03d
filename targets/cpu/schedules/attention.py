"""CPU schedule for the fused attention kernel (`fuse`'s `graphopt.attention` group).

After FuseTIR the group is one PrimFunc of a dozen root blocks. It is recognized by its block
*structure*, not by names: exactly four reductions, in order

    scores  S[.., i, j] += A[.., i, k] * B[.., k, j]      (Q K^T; scale / transposes inlined)
    max     M[.., i]     = max(M[.., i], f(S)[.., i, j])   (f: mask add, or nothing)
    sum     Z[.., i]    += E[.., i, j]                     (E = exp(f(S) - M): a spatial block)
    output  O[.., i, d] += P[.., i, j] * V[.., j, d]      (P = E / Z [+ NaN guard])

with every other block spatial, and one block writing the function's output (the output
matmul itself, or the head merge after it). Anything else: `schedule_attention` returns False
(or raises while scheduling) and the generic rules run.

The schedule works on a block of query rows at a time, so nothing row-sized leaves the cache:
every spatial block except K^T, the exp row, the probability row and the output is inlined;
the output's (batch, head, query row) loops (with a head merge, the heads are split off the
merged `heads * d` loop and moved outside the rows) are split into row blocks, fused and run
in parallel; the scores,
max, exp, sum, probabilities and output matmul are computed at that loop (their buffers
become per-thread rows). Both matmuls keep an `rows x (vectors of lanes)` register tile:
the reduction outside, the row block unrolled, the inner spatial axis (keys for the scores,
head dim for the output) vectorized. exp runs once per score and is vectorized; the row max
and row sum run in SIMD lanes (rfactor: `lanes` partials, then a short scalar reduction). K^T
stays a root block (parallel, vectorized) so the score tile reads it contiguously. The
function is run through StmtSimplify first (see `schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV

from graphopt.targets.cpu.schedules import common

# Row blocks bigger than this stop paying: the K^T / V rows are in L1 already.
MAX_ROW_BLOCK = 4
# SIMD registers of one tile row (scores: keys; output: head dim).
MAX_TILE_VECTORS = 4


@dataclass
class _Matmul:
    view: common.BlockView
    a: tvm.ir.TensorLoad  # A[.., i, k]
    b: tvm.ir.TensorLoad  # B[.., k, j]


@dataclass
class AttentionBlocks:
    """The blocks the schedule places (BlockViews of the root scope)."""

    scores: _Matmul
    max: common.BlockView
    exp: common.BlockView
    sum: common.BlockView
    probs: common.BlockView  # the block writing the output matmul's A operand
    output: _Matmul
    out: common.BlockView  # the block writing the function's output
    k_t: common.BlockView | None  # the block writing the scores' B operand (None: a parameter)


def _matmul(view: common.BlockView) -> _Matmul | None:
    """`C[.., i, j] += A[.., i, k] * B[.., k, j]` with k the block's one reduction iterator."""
    store = view.store()
    if store is None or view.kinds.count("R") != 1 or not view.kinds.endswith("R"):
        return None
    operands = common.product_operands(store)
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
    return _Matmul(view, a, b)


def _reduce_with(view: common.BlockView, op) -> tvm.ir.TensorLoad | None:
    """`C[..] = op(C[..], X[..])` over the last iterator -> the load of X."""
    store = view.store()
    if store is None or view.kinds.count("R") != 1 or not view.kinds.endswith("R"):
        return None
    value = store.value
    if not isinstance(value, op):
        return None
    for acc, other in ((value.a, value.b), (value.b, value.a)):
        if isinstance(acc, tvm.ir.TensorLoad) and acc.source.same_as(store.buffer):
            loads = common.buffer_loads(other)
            if len(loads) == 1 and isinstance(other, tvm.ir.TensorLoad):
                return other
    return None


def _calls(expr, name: str) -> bool:
    hit: list = []

    def visit(e):
        if isinstance(e, tvm.ir.Call) and str(getattr(e.op, "name", "")) == name:
            hit.append(e)

    common.walk(expr, visit)
    return bool(hit)


def match_attention(sch: Schedule, func: tirx.PrimFunc) -> AttentionBlocks | None:
    """The attention blocks of `func`, or None when its structure is not attention's."""
    views = common.root_blocks(sch)
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
    if len(outs) != 1:
        return None
    out = outs[0]
    if out is not output.view and (not out.is_spatial or output.view.name not in deps[out.name]):
        return None
    k_t = writer.get(scores.b.source)
    if k_t is not None and not k_t.is_spatial:
        return None
    return AttentionBlocks(scores, mx, exp, sm, probs, output, out, k_t)


def _read_buffers(view: common.BlockView) -> set:
    return {r.source for r in view.block.reads}


def _read_buffers_deep(view: common.BlockView, writer: dict) -> set:
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


# --------------------------------------------------------------------------------------------
# Schedule


def _extent(sch: Schedule, loop) -> int:
    value = common.const_int(sch.get(loop).extent)
    if value is None:
        raise ValueError("dynamic loop extent")
    return value


def _row_loops(sch: Schedule, blocks: AttentionBlocks) -> list:
    """The output block's leading loops that do not index the output matmul's column (d)."""
    out = blocks.out
    if out.name == blocks.output.view.name:
        return list(out.loops[:-2])  # [.., i] of [.., i, d, k]
    d_buf = blocks.output.view.block.writes[0].source
    loads = [
        ld for ld in common.buffer_loads(sch.get(out.rv).body.value) if ld.source.same_as(d_buf)
    ]
    if not loads:
        raise ValueError("output block does not read the output matmul")
    analyzer = tvm.sym.Analyzer()  # tvm.arith in older TVM
    for iv in sch.get(out.rv).iter_vars:
        analyzer.bind(iv.var, iv.dom)
    col_vars: set = set()
    for ld in loads:
        col_vars |= common.free_vars(analyzer.simplify(ld.indices[-1]))
    # Each loop binds one iterator directly (unit iterators may have lost their loop).
    bound = list(zip(common.binding(sch, out), sch.get(out.rv).iter_vars))
    prefix = []
    for loop in out.loops:
        loop_var = sch.get(loop).loop_var
        ivs = [iv.var for value, iv in bound if value.same_as(loop_var)]
        if not ivs and _extent(sch, loop) == 1:
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


def _heads_outside_rows(sch: Schedule, out_rv, prefix: list, head_dim: int) -> list:
    """Head merge (`[.., rows, heads * d]`): split heads off the merged loop and put them
    outside the rows, so the parallel tasks are (batch, head, row block), not (batch, row
    block) with every head inside."""
    loops = list(sch.get_loops(out_rv))
    if len(loops) != len(prefix) + 1:
        return prefix
    merged = loops[-1]
    extent = _extent(sch, merged)
    if extent % head_dim or extent == head_dim:
        return prefix
    heads, _ = sch.split(merged, [None, head_dim])
    sch.reorder(heads, prefix[-1])
    return [*prefix[:-1], heads, prefix[-1]]


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def _tile_vectors(extent: int, lanes: int) -> int:
    """Inner-axis width of a register tile: whole vectors dividing the extent, or all of it."""
    if extent % lanes:
        return extent if extent <= MAX_TILE_VECTORS * lanes else lanes
    return lanes * _largest_divisor(extent // lanes, MAX_TILE_VECTORS)


def _register_tile(sch: Schedule, rv, width: int) -> None:
    """Loops [.., i, j, k] -> [.., jo, k, i (unrolled), ji (vector)]; init vectorized too."""
    loops = sch.get_loops(rv)
    i, j, k = loops[-3], loops[-2], loops[-1]
    if _extent(sch, j) > width:
        jo, ji = sch.split(j, [None, width])
        sch.reorder(jo, k, i, ji)
    else:
        ji = j
        sch.reorder(k, i, ji)
    if _extent(sch, i) > 1:
        sch.unroll(i)
    sch.vectorize(ji)
    init = sch.decompose_reduction(rv, k)
    sch.vectorize(sch.get_loops(init)[-1])


def _vectorize_inner(sch: Schedule, rv, info: common.CpuInfo) -> None:
    loops = sch.get_loops(rv)
    extent = _extent(sch, loops[-1])
    if extent <= 1:
        return
    if extent > 8 * info.lanes and extent % info.lanes == 0:
        width = info.lanes * _largest_divisor(extent // info.lanes, 8)
        _, vec = sch.split(loops[-1], [None, width])
        sch.vectorize(vec)
    else:
        sch.vectorize(loops[-1])


def _rfactor_row(sch: Schedule, rv, info: common.CpuInfo) -> SBlockRV | None:
    """Row max / sum in SIMD lanes: `lanes` partial results (rfactor), then a short scalar
    reduction of them. Scalar, the two dependency chains over the keys cost about as much as
    the register-tiled matmuls. Rows the lanes do not divide stay scalar (None). At root:
    rfactor wants the block alone in its loop nest, so this comes before compute_at."""
    k = sch.get_loops(rv)[-1]
    if _extent(sch, k) % info.lanes or _extent(sch, k) <= info.lanes:
        return None
    _, ki = sch.split(k, [None, info.lanes])
    return sch.rfactor(ki, factor_axis=len(sch.get(rv).iter_vars) - 1)


def _vector_partials(sch: Schedule, partial: SBlockRV, outer) -> None:
    """The rfactor block under its row block: keys outside, lanes inside, vectorized.

    rfactor makes the lane iterator the block's first, so compute_at puts its loop outermost.
    """
    block = sch.get(partial)
    lane_var = block.body.indices[-1]  # the partial results' lane
    values = common.binding(sch, common.view_of(sch, partial))
    (lane_value,) = [v for iv, v in zip(block.iter_vars, values) if iv.var.same_as(lane_var)]
    (key_value,) = [
        v for iv, v in zip(block.iter_vars, values) if iv.iter_type == tirx.IterVar.CommReduce
    ]
    loops = list(sch.get_loops(partial))
    outer_for = sch.get(outer)
    inner = loops[[sch.get(lp).same_as(outer_for) for lp in loops].index(True) + 1 :]
    lane = [lp for lp in inner if sch.get(lp).loop_var.same_as(lane_value)]
    keys = [lp for lp in inner if sch.get(lp).loop_var.same_as(key_value)]
    if len(lane) != 1 or len(keys) != 1:
        raise ValueError("rfactor block not bound by plain loops")
    lane_for = sch.get(lane[0])
    sch.reorder(*[lp for lp in inner if not sch.get(lp).same_as(lane_for)], lane[0])
    sch.vectorize(lane[0])
    init = sch.decompose_reduction(partial, keys[0])
    sch.vectorize(sch.get_loops(init)[-1])


def _work(sch: Schedule, blocks: AttentionBlocks) -> int:
    """Multiply-adds of both matmuls (the softmax is small next to them)."""
    total = 0
    for mm in (blocks.scores, blocks.output):
        n = 1
        for e in mm.view.extents():
            n *= e or 1
        total += n
    return total


def schedule_attention(sch: Schedule, func: tirx.PrimFunc, info: common.CpuInfo) -> bool:
    """Schedule the fused attention kernel row block by row block; False if `func` is not one."""
    blocks = match_attention(sch, func)
    if blocks is None:
        return False
    keep = {
        v.name
        for v in (
            blocks.scores.view,
            blocks.max,
            blocks.exp,
            blocks.sum,
            blocks.probs,
            blocks.output.view,
            blocks.out,
            blocks.k_t,
        )
        if v is not None
    }
    for view in common.root_blocks(sch):
        if view.name not in keep:
            sch.compute_inline(view.rv)
    get = sch.get_sblock
    keys = _extent(sch, sch.get_loops(get(blocks.scores.view.name))[-2])
    head_dim = _extent(sch, sch.get_loops(get(blocks.output.view.name))[-2])
    nr_scores = _tile_vectors(keys, info.lanes)
    nr_output = _tile_vectors(head_dim, info.lanes)
    vectors = max(-(-nr_scores // info.lanes), -(-nr_output // info.lanes))

    partials = [_rfactor_row(sch, get(v.name), info) for v in (blocks.max, blocks.sum)]

    # Row blocks over the output's (batch.., row) loops, in parallel.
    out_rv = get(blocks.out.name)
    blocks.out = common.view_of(sch, out_rv)
    prefix = _row_loops(sch, blocks)
    if blocks.out.name != blocks.output.view.name:
        prefix = _heads_outside_rows(sch, out_rv, prefix, head_dim)
    # The row block splits the innermost row loop (a block never straddles a batch or head:
    # compute_at could not bound that region), then the loops outside it are fused.
    rb_max = min(MAX_ROW_BLOCK, max(1, info.accumulators // vectors))
    rb = _largest_divisor(_extent(sch, prefix[-1]), rb_max)
    row_outer, _ = sch.split(prefix[-1], [None, rb])
    outer = sch.fuse(*prefix[:-1], row_outer) if len(prefix) > 1 else row_outer
    if _work(sch, blocks) >= common.MIN_PARALLEL_WORK:
        sch.parallel(outer)

    chain = [blocks.probs, blocks.sum, partials[1], blocks.exp, blocks.max, partials[0]]
    chain = [v for v in chain if v is not None] + [blocks.scores.view]
    if blocks.out.name != blocks.output.view.name:
        chain.insert(0, blocks.output.view)
        _vectorize_inner(sch, out_rv, info)
    for view in chain:
        rv = view if isinstance(view, SBlockRV) else get(view.name)
        sch.compute_at(rv, outer, preserve_unit_loops=True)
    for partial in partials:
        if partial is not None:
            _vector_partials(sch, partial, outer)

    _register_tile(sch, get(blocks.scores.view.name), nr_scores)
    _register_tile(sch, get(blocks.output.view.name), nr_output)
    _vectorize_inner(sch, get(blocks.exp.name), info)
    _vectorize_inner(sch, get(blocks.probs.name), info)
    if blocks.k_t is not None:
        common.schedule_injective(sch, get(blocks.k_t.name), info)
    return True
