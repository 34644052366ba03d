"""Rule `matmul`: matmul / dense / batch matmul, with a fused elementwise epilogue.

One reduction block `C[b.., i.., j] += A[b.., i.., k] * B[b.., k, j]` (batch dims, 3-D x 2-D,
any layout of B). Odd M / N are padded with `pad_einsum` (predicated tiles run several times
slower); B is packed into panels `[j // nr, k, j % nr]`; an `mr x nr` tile of accumulators
(nr = one or two SIMD registers) stays in registers over k, rows unrolled and columns
vectorized, so LLVM emits one broadcast of A per row and one FMA per accumulator; the
epilogue runs per tile from the accumulators. When a panel of B (K x 64 columns) outgrows L2,
K is blocked: each thread takes a block of rows and sweeps K in `kc` steps, reusing a
`kc x nc` block of B (L2) over all its row tiles and a `kc x nr` micro-panel (L1) per column
tile.

Measured (per CPU-second, AVX-512 Zen 5, loaded 2-core machine): 1024^3 runs at ~90% of the
core's FMA peak without K blocking; packing A into `[M/mr, K, mr]` panels was 3-10% slower
at every shape tried (A rows stream well from L1/L2 already), so A is read in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules.common import (
    MIN_PARALLEL_WORK,
    BlockView,
    CpuInfo,
    const_int,
    divisors,
    mark_prepack,
    plain_vars,
    product,
    product_operands,
    root_blocks,
    schedule_injective,
    single_reduction,
    tile_writer,
)
from graphopt.targets.cpu.schedules.symbolic import nominal


@dataclass
class MatmulShape:
    batch: list[int]  # iterator positions of the block
    rows: list[int]
    col: int
    red: int
    a_index: int  # read positions in block.reads
    b_index: int
    b_col_dim: int  # buffer dims of B holding j and k
    b_red_dim: int


def matmul_shape(view: BlockView) -> MatmulShape | None:
    """Classify the iterators of `C[b.., i.., j] += A[b.., i.., k] * B[b.., k, j]`."""
    store = view.store()
    if store is None or view.kinds.count("R") != 1 or not view.is_reduction:
        return None
    operands = product_operands(store)
    if operands is None:
        return None
    ivars = [iv.var for iv in view.block.iter_vars]
    out_vars = plain_vars(store.indices)
    if out_vars is None or None in out_vars or len(set(out_vars)) != len(out_vars):
        return None
    a_vars = [plain_vars(ld.indices) for ld in operands]
    if any(v is None for v in a_vars):
        return None
    red = next(i for i, k in enumerate(view.kinds) if k == "R")
    j = ivars.index(out_vars[-1])
    uses = [set(v for v in av if v is not None) for av in a_vars]
    b_pos = next((n for n in (0, 1) if ivars[j] in uses[n]), None)
    if b_pos is None or ivars[j] in uses[1 - b_pos]:
        return None
    a_pos = 1 - b_pos
    k = ivars[red]
    if k not in uses[a_pos] or k not in uses[b_pos]:
        return None
    batch, rows = [], []
    for pos, var in enumerate(ivars):
        if pos in (j, red):
            continue
        if var not in out_vars:
            return None
        in_a, in_b = var in uses[a_pos], var in uses[b_pos]
        if in_a and in_b:
            batch.append(pos)
        elif in_a:
            rows.append(pos)
        else:
            return None  # a second column-like axis: not a plain matmul
    # Output order must be batch.., rows.., j (so rows and batch can be fused per tile).
    order = [ivars.index(v) for v in out_vars]
    if order != sorted(batch) + sorted(rows) + [j] and order != sorted(rows) + [j]:
        if order[-1] != j:
            return None
    reads = [r.source for r in view.block.reads]
    bufs = [operands[a_pos].source, operands[b_pos].source]
    if bufs[0].same_as(bufs[1]):
        return None
    try:
        a_index = next(n for n, b in enumerate(reads) if b.same_as(bufs[0]))
        b_index = next(n for n, b in enumerate(reads) if b.same_as(bufs[1]))
    except StopIteration:
        return None
    b_indices = a_vars[b_pos]
    return MatmulShape(
        batch=batch,
        rows=rows,
        col=j,
        red=red,
        a_index=a_index,
        b_index=b_index,
        b_col_dim=b_indices.index(ivars[j]),
        b_red_dim=b_indices.index(k),
    )


def _pick_rows(m: int, mr_max: int) -> tuple[int, bool]:
    """Rows per register tile and whether M must be padded to a multiple of it."""
    if m <= mr_max:
        return m, False
    for d in range(mr_max, mr_max // 2, -1):
        if m % d == 0:
            return d, False
    return mr_max, True


def schedule_matmul(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo) -> bool:
    """Rule `matmul`: pad odd M / N, pack B into panels, then tile for the registers.

    Symbolic M or N (a sequence length) are padded to whole tiles like odd ones; decisions
    that need their size take symbolic.NOMINAL_EXTENT; K is then never blocked."""
    found = single_reduction(sch, matmul_shape, symbolic=info.symbolic)
    if found is None:
        return False
    _views, mm, shape, producers, consumers, ext = found
    symbolic = [p for p, e in enumerate(ext) if e is None]
    sizes = nominal(ext)
    m, n = product(sizes[p] for p in shape.rows), sizes[shape.col]
    batch = product(sizes[p] for p in shape.batch)
    b_param = _reads_param(func, sch.get(mm.rv).reads[shape.b_index].source)
    nr, n_pad = _pick_cols(n, m, info.lanes, b_param)
    if shape.col in symbolic:
        nr = n_pad = 2 * info.lanes
    n_regs = -(-nr // info.lanes)
    mr_max = max(1, info.accumulators // n_regs)
    # Several row axes (e.g. [batch, seq] x weight) are fused; padding the innermost one to a
    # multiple of mr makes the fused count one too.
    mr, pad_rows = _pick_rows(m, mr_max)
    if any(p in symbolic for p in shape.rows):
        mr, pad_rows = mr_max, True

    for p in producers:
        schedule_injective(sch, p.rv, info)

    # 1. Pad odd M / N so every tile is whole (predicated tiles run several times slower).
    padding = [1] * len(ext)
    if pad_rows:
        padding[shape.rows[-1]] = mr
    if n_pad > 1:
        padding[shape.col] = n_pad
    pad_blocks: list[BlockView] = []
    if any(p > 1 for p in padding):
        mm, consumers, pad_blocks = _pad_tiles(sch, mm, consumers, padding)
        if pad_rows and shape.red in symbolic:
            pad_blocks = _inline_a_pad(sch, mm, shape, pad_blocks)
        ext = nominal(mm.extents())
        m, n = product(ext[p] for p in shape.rows), ext[shape.col]

    out_rv = tile_writer(sch, mm.rv, consumers, info)
    # 2. Pack B into panels; the pads it does not absorb run as their own loops.
    _pack_b(sch, func, mm.rv, shape, nr, m >= 16 or b_param, pad_blocks, info)
    pad_names = {v.name for v in pad_blocks}
    for v in root_blocks(sch):
        if v.name in pad_names:
            schedule_injective(sch, v.rv, info)

    # 3. Tile for the registers, with K blocked when B outgrows L2.
    sizes = (batch, m, n, sizes[shape.red])
    kc = _k_block(sizes[3], m, mr, info) if shape.rows and not symbolic else None
    if kc is not None:
        _tile_k_blocked(sch, mm.rv, out_rv, shape, sizes, mr, nr, kc, info)
    else:
        _tile(sch, mm.rv, out_rv, shape, sizes, mr, nr, shape.col in symbolic)
    return True


def _pick_cols(n: int, m: int, lanes: int, b_param: bool) -> tuple[int, int]:
    """Columns per register tile and the multiple N is padded to (1: none)."""
    # Two SIMD registers when N allows, one, or all of a small N; else pad N.
    if n % (2 * lanes) == 0:
        return 2 * lanes, 1
    if n % lanes == 0:
        return lanes, 1
    if n < lanes:
        return n, 1
    nr = 2 * lanes if n > 4 * lanes else lanes
    if m < 16 and not b_param:
        # Few rows (GEMV-like) over a computed B: padding N would copy all of B on every
        # call. Use a tile width that divides N instead, if one is a multiple of 4.
        fits = [d for d in divisors(n) if d <= 2 * lanes and d % 4 == 0]
        if fits:
            return fits[-1], 1
    return nr, nr


def _pad_tiles(sch: Schedule, mm: BlockView, consumers: list[BlockView], padding: list[int]):
    """Pad M / N to whole tiles: predicated tiles run several times slower."""
    # Returns the padded block, its consumers and the blocks that pad its inputs.
    before = {v.name for v in root_blocks(sch)}
    sch.pad_einsum(mm.rv, padding)
    mm = next(v for v in root_blocks(sch) if v.name == mm.name)
    c_buf = mm.block.writes[0].source
    pad_blocks: list[BlockView] = []
    for v in root_blocks(sch):
        if v.name in before:
            continue
        if any(r.source.same_as(c_buf) for r in v.block.reads):
            # The copy out of the padded result: inline it into the epilogue, or let it
            # be the block that stores the tile.
            if consumers:
                sch.compute_inline(v.rv)
            else:
                consumers = [v]
        else:
            pad_blocks.append(v)
    return mm, consumers, pad_blocks


def _inline_a_pad(sch: Schedule, mm: BlockView, shape: MatmulShape, pad_blocks):
    """Read A through its padding condition instead of copying it padded, where K is
    symbolic too: that copy is a loop with symbolic divisions per element (12 x seq x seq for
    the attention's P V). With a static K the copy is cheap and the condition is not (2x
    slower dense layers), so A is copied there."""
    a_buf = sch.get(mm.rv).reads[shape.a_index].source
    kept = []
    for v in pad_blocks:
        if v.block.writes[0].source.same_as(a_buf):
            sch.compute_inline(v.rv)
        else:
            kept.append(v)
    return kept


def _pack_b(sch, func, mm_rv, shape: MatmulShape, nr, reused, pad_blocks, info) -> None:
    """Pack B into `[j // nr, k, j % nr]` panels so each column tile streams B sequentially."""
    # Done when enough rows reuse B (`reused`: 16 rows, or B a parameter, i.e. a weight:
    # prepacked at compile time) or when B is transposed. A GEMV then streams each panel
    # instead of a short piece of every row of B (MobileNetV2's 1280 x 1000 classifier: 2x
    # faster).
    b_buf = sch.get(mm_rv).reads[shape.b_index].source
    ndim = len(b_buf.ty.shape)
    if not (reused or shape.b_col_dim != ndim - 1):
        return
    b_pad = [v for v in pad_blocks if v.block.writes[0].source.same_as(b_buf)]
    pack = sch.cache_read(mm_rv, shape.b_index, "global")
    cdim, kd = shape.b_col_dim, shape.b_red_dim

    def index_map(*idx):
        others = [x for d, x in enumerate(idx) if d not in (cdim, kd)]
        return (*others, idx[cdim] // nr, idx[kd], idx[cdim] % nr)

    sch.transform_layout(pack, ("write", 0), tirx.IndexMap.from_func(index_map, ndim=ndim))
    for v in b_pad:
        # The zero fill of a padded B happens while packing, not in the inner loop.
        sch.compute_inline(v.rv)
    mark_prepack(sch, pack, func)
    schedule_injective(sch, pack, info)


def _tile(sch, mm_rv, out_rv, shape: MatmulShape, sizes, mr, nr, symbolic_n=False) -> None:
    """Keep an mr x nr tile of accumulators in registers over all of K (B fits L2)."""
    # [batch] x [rows / mr] x [cols / nc] (parallel) x [nc / nr] x k x mr x nr; the epilogue
    # runs per tile, from the accumulators.
    batch, m, n, k = sizes
    loops = sch.get_loops(mm_rv)
    batch_loops = [loops[p] for p in shape.batch]
    row_loops = [loops[p] for p in shape.rows]
    col_loop, red_loop = loops[shape.col], loops[shape.red]
    if row_loops:
        row = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
        ro, ri = sch.split(row, [None, mr])
    else:
        ro = ri = None
    panel = nr if symbolic_n else _panel_cols(n, nr)
    co, cm, ci = sch.split(col_loop, [None, panel // nr, nr])
    order = [*batch_loops, co] + ([ro] if ro is not None else []) + [cm, red_loop]
    order += ([ri] if ri is not None else []) + [ci]
    sch.reorder(*order)
    outer = [*batch_loops, co] + ([ro] if ro is not None else [])
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if batch * m * n * k >= MIN_PARALLEL_WORK:
        sch.parallel(par)

    sch.reverse_compute_at(out_rv, cm, preserve_unit_loops=True)
    out_loops = sch.get_loops(out_rv)
    if const_int(sch.get(out_loops[-1]).extent) not in (None, 1):
        sch.vectorize(out_loops[-1])

    if ri is not None:
        sch.unroll(ri)
    sch.vectorize(ci)
    init = sch.decompose_reduction(mm_rv, red_loop)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])


def _panel_cols(n: int, nr: int) -> int:
    """Columns per task: up to 64, whole tiles that divide N, so no task gets a partial panel."""
    panel = nr * max(1, min(64 // nr, (n // nr)))
    while (n // nr) % (panel // nr):
        panel -= nr
    return panel


def _reads_param(func: tirx.PrimFunc, buf) -> bool:
    return any(buf.same_as(p) for p in func.params)


# Columns of B the K-blocked schedule reuses from L2 per thread, and its row block (in rows).
K_BLOCK_COLS = 128
K_BLOCK_ROWS = 128
# The K step: a kc x nr micro-panel of B (32 KB at nr = 16, 64 KB at 32) per column tile.
K_STEP = 512


def _k_block(k: int, m: int, mr: int, info: CpuInfo) -> int | None:
    """The K step, or None where a 64-column panel of B over all of K fits in L2 (then the
    unblocked tile reuses it across row tiles anyway: blocking measured 5-10% slower there).

    A divisor of K between K_STEP / 2 and K_STEP when there is one, else K_STEP (the last
    step is then a partial one, predicated).
    """
    if k * 64 * 4 <= info.l2_bytes or m < 2 * mr or k <= K_STEP:
        return None
    fits = [d for d in divisors(k) if K_STEP // 2 <= d <= K_STEP]
    return fits[-1] if fits else K_STEP


def _tile_k_blocked(sch, mm_rv, out_rv, shape, sizes, mr, nr, kc, info: CpuInfo) -> None:
    """[batch] x [cols / nc] x [rows / mc] (parallel) x [K / kc] x [nc / nr] x [mc / mr] x kc
    x mr x nr; the tile writer (epilogue) runs once per mc x nc block, after the last K step.
    Blocks shrink until there are two per core (when the matrix has that many tiles).
    """
    batch, m, n, k = sizes
    row_tiles, col_tiles = m // mr, n // nr
    per_block = max(d for d in divisors(row_tiles) if d * mr <= max(mr, K_BLOCK_ROWS))
    per_panel = max(d for d in divisors(col_tiles) if d * nr <= max(nr, K_BLOCK_COLS))
    while batch * (row_tiles // per_block) * (col_tiles // per_panel) < 2 * info.cores:
        if per_block > 1:
            per_block = max(d for d in divisors(row_tiles) if d < per_block)
        elif per_panel > 1:
            per_panel = max(d for d in divisors(col_tiles) if d < per_panel)
        else:
            break
    loops = sch.get_loops(mm_rv)
    batch_loops = [loops[p] for p in shape.batch]
    row_loops = [loops[p] for p in shape.rows]
    col_loop, red_loop = loops[shape.col], loops[shape.red]
    row = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
    ro, rm, ri = sch.split(row, [None, per_block, mr])
    co, cm, ci = sch.split(col_loop, [None, per_panel, nr])
    ko, ki = sch.split(red_loop, [None, kc])
    sch.reorder(*batch_loops, co, ro, ko, cm, rm, ki, ri, ci)
    par = sch.fuse(*batch_loops, co, ro) if batch_loops else sch.fuse(co, ro)
    if batch * m * n * k >= MIN_PARALLEL_WORK:
        sch.parallel(par)
    sch.reverse_compute_at(out_rv, par, preserve_unit_loops=True)
    out_loops = sch.get_loops(out_rv)
    if const_int(sch.get(out_loops[-1]).extent) not in (None, 1):
        sch.vectorize(out_loops[-1])
    sch.unroll(ri)
    sch.vectorize(ci)
    init = sch.decompose_reduction(mm_rv, ko)
    sch.vectorize(sch.get_loops(init)[-1])
