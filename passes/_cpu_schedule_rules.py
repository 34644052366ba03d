"""Rules behind `schedule-cpu`: default (untuned) schedules for the TIR kernels of real models.

Each rule reads the block structure of one PrimFunc (iterator kinds, buffer indices), never its
name, and either schedules it completely or raises (the caller then keeps the original):

- matmul: one reduction block `C[b.., i.., j] += A[b.., i.., k] * B[b.., k, j]` (batch dims,
  3-D x 2-D, any layout of B, fused elementwise epilogue). Odd M / N are padded with
  `pad_einsum` (predicated tiles run several times slower); B is packed into panels
  `[j // nr, k, j % nr]`; an `mr x nr` tile of accumulators (nr = one or two SIMD registers)
  stays in registers over all of k; the epilogue runs per tile from the accumulators.
- conv: one reduction block `C[.., f, y, x] += D[.., y*s + ry, x*s + rx] * W[f, ..]`.
  Regular / pointwise conv: output channels in SIMD lanes (weight packed channel-last), a few
  output pixels unrolled, data broadcast: any stride works. Depthwise / grouped / channel
  counts that fit no vector: output width in SIMD lanes, a block of rows unrolled with the
  window so shared input rows load once, padding done per channel in cache; strided convs over
  wide maps keep TVM's loop order (LLVM vectorizes the strided loads with shuffles).
- window: the same without a weight (max / avg pooling, sums over outer axes).
- reduction: `s_tir.dlight.cpu.Reduction` (softmax, layer norm, mean), else the leading
  spatial loops made parallel.
- elementwise: everything inlined into the last block, contiguous loops fused, vectorized,
  parallel.

Weight packing blocks that read a function parameter are marked as layout rewrites, so the
pass can move them out (SplitLayoutRewritePreproc) and fold them for constant weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import Schedule

SCHEDULED_ATTR = "tirx.is_scheduled"

# Below this much work a kernel runs on one thread: waking the thread pool costs several
# microseconds (more without spinning workers), more than small kernels take. Work is
# multiply-adds for matmul / conv (output elements x reduction size), elements otherwise.
MIN_PARALLEL_WORK = 1 << 20
MIN_PARALLEL_ELEMS = 1 << 16


# --------------------------------------------------------------------------------------------
# What the target offers


@dataclass(frozen=True)
class CpuInfo:
    """What the schedules need to know about the CPU: SIMD width, registers and cores."""

    lanes: int  # fp32 lanes of one SIMD register
    registers: int  # SIMD registers
    cores: int

    @property
    def accumulators(self) -> int:
        """SIMD registers a register tile may hold, leaving room for loads and broadcasts."""
        return 16 if self.registers >= 32 else 12


def cpu_info(target: tvm.target.Target | None) -> CpuInfo | None:
    """CpuInfo of an LLVM CPU target, or None for anything else (the rules then do nothing).

    The SIMD width comes from the target's CPU features: `llvm_get_vector_width` answers 512
    for every x86 CPU in TVM 0.27 (haswell and a bare "llvm" included), so it cannot be used.
    """
    from tvm.target import codegen

    if target is None or target.kind.name != "llvm":
        return None
    features = set(codegen.llvm_get_cpu_features(target))
    triple = str(target.attrs.get("mtriple", "") or "")
    cores = int(target.attrs.get("num-cores", 0) or 0) or 1
    if "avx512f" in features:
        return CpuInfo(lanes=16, registers=32, cores=cores)
    if "avx2" in features or "avx" in features:
        return CpuInfo(lanes=8, registers=16, cores=cores)
    if triple.startswith(("aarch64", "arm64")):
        return CpuInfo(lanes=4, registers=32, cores=cores)
    return CpuInfo(lanes=4, registers=16, cores=cores)


# --------------------------------------------------------------------------------------------
# Small IR helpers


def _walk(expr, visit: Callable) -> None:
    """Pre-order walk over a TIR expression (the Python API has no expression visitor)."""
    visit(expr)
    if isinstance(expr, tvm.ir.TensorLoad):
        for idx in expr.indices:
            _walk(idx, visit)
    elif isinstance(expr, tirx.Cast):
        _walk(expr.value, visit)
    elif isinstance(expr, tvm.ir.Call):
        for arg in expr.args:
            _walk(arg, visit)
    elif isinstance(expr, tirx.Select):
        for sub in (expr.condition, expr.true_value, expr.false_value):
            _walk(sub, visit)
    elif isinstance(expr, tirx.Let):
        _walk(expr.value, visit)
        _walk(expr.body, visit)
    elif isinstance(expr, (tirx.Not,)):
        _walk(expr.a, visit)
    elif hasattr(expr, "a") and hasattr(expr, "b"):
        _walk(expr.a, visit)
        _walk(expr.b, visit)


def _loads(expr) -> list:
    """Every buffer load (`tvm.ir.TensorLoad` in 0.27) in an expression."""
    found: list = []
    _walk(expr, lambda e: found.append(e) if isinstance(e, tvm.ir.TensorLoad) else None)
    return found


def _has_if_then_else(expr) -> bool:
    hit = []

    def visit(e):
        if isinstance(e, tvm.ir.Call) and str(getattr(e.op, "name", "")).endswith("if_then_else"):
            hit.append(e)
        if isinstance(e, tirx.Select):
            hit.append(e)

    _walk(expr, visit)
    return bool(hit)


def _vars(expr) -> set:
    return set(tirx.analysis.undefined_vars(expr))


def _int(x) -> int | None:
    return int(x) if isinstance(x, tirx.IntImm) else None


def _linear_coef(expr, var) -> int | None:
    """The constant c of `expr = c * var + (terms without var)`, None if not of that form."""
    if isinstance(expr, tirx.Var):
        return 1 if expr.same_as(var) else 0
    if isinstance(expr, tirx.IntImm):
        return 0
    if isinstance(expr, (tirx.Add, tirx.Sub)):
        a, b = _linear_coef(expr.a, var), _linear_coef(expr.b, var)
        if a is None or b is None:
            return None
        return a + b if isinstance(expr, tirx.Add) else a - b
    if isinstance(expr, tirx.Mul):
        for u, w in ((expr.a, expr.b), (expr.b, expr.a)):
            if isinstance(w, tirx.IntImm):
                c = _linear_coef(u, var)
                return None if c is None else c * int(w)
        return None
    return None if var in _vars(expr) else 0


def _strip_cast(expr):
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
        return [_int(iv.dom.extent) for iv in self.block.iter_vars]

    def store(self) -> tirx.BufferStore | None:
        body = self.block.body
        return body if isinstance(body, tirx.BufferStore) else None


def _view(sch: Schedule, rv) -> BlockView:
    return BlockView(rv, sch.get(rv), list(sch.get_loops(rv)))


def root_blocks(sch: Schedule) -> list[BlockView]:
    return [_view(sch, rv) for rv in sch.get_child_blocks(sch.get_sblock("root"))]


def _trivially_bound(sch: Schedule, view: BlockView) -> bool:
    """One loop per block iterator, in order, each bound directly (the legalized form)."""
    loops = [sch.get(lp) for lp in view.loops]
    if len(loops) != len(view.block.iter_vars):
        return False
    values = _binding(sch, view)
    for loop, iv, value in zip(loops, view.block.iter_vars, values):
        if not value.same_as(loop.loop_var):
            return False
        if _int(loop.min) != 0 or _int(loop.extent) != _int(iv.dom.extent):
            return False
    # Perfect nesting: each loop's body is the next loop, the innermost's the block.
    for outer, inner in zip(loops, loops[1:]):
        if not outer.body.same_as(inner):
            return False
    return True


_GET_REALIZE = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")


def _binding(sch: Schedule, view: BlockView) -> list:
    return list(_GET_REALIZE(sch, view.rv).iter_values)


def simple_structure(sch: Schedule, views: Sequence[BlockView]) -> bool:
    """Every root block sits alone in its own perfect, trivially bound loop nest."""
    for v in views:
        if v.store() is None or not _trivially_bound(sch, v):
            return False
        if not all(k in "SR" for k in v.kinds):
            return False
    return True


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _vector_width(extent: int, lanes: int) -> int:
    """Largest power of two <= lanes dividing extent (1 when extent is odd)."""
    v = lanes
    while v > 1 and extent % v:
        v //= 2
    return v


# --------------------------------------------------------------------------------------------
# Shared pieces


def _contiguous_suffix(block, loop_extents: list[int]) -> int:
    """How many innermost loops can be fused into one contiguous run in every buffer access.

    A trailing loop joins when the store and every load index their trailing dims with exactly
    those loop iterators (and the dims are full), or do not use them at all (a broadcast).
    """
    store = block.body if isinstance(block.body, tirx.BufferStore) else None
    ivars = [iv.var for iv in block.iter_vars]
    if store is None or len(ivars) != len(loop_extents):
        return 1
    accesses = [(store.buffer, list(store.indices))]
    accesses += [(ld.source, list(ld.indices)) for ld in _loads(store.value)]
    count = 1
    for t in range(2, len(ivars) + 1):
        tail = ivars[-t:]
        ok = True
        for buf, idx in accesses:
            used = set()
            for i in idx:
                used |= _vars(i)
            if not used & set(tail):
                continue
            shape = [_int(d) for d in buf.ty.shape][-t:]
            if len(idx) < t or any(
                not (isinstance(i, tirx.Var) and i.same_as(v)) for i, v in zip(idx[-t:], tail)
            ):
                ok = False
                break
            if shape != loop_extents[-t:]:
                ok = False
                break
            if any(v in used for v in ivars[:-t] if any(v in _vars(i) for i in idx[-t:])):
                ok = False
                break
        if not ok:
            break
        count = t
    return count


# Intrinsics LLVM codegen has no vector lowering for in TVM 0.27 ("unknown intrinsic
# tirx.cosh" at build time): blocks calling them stay scalar (ONNX Cosh/Sinh conformance cases).
_SCALAR_ONLY = {"tirx.cosh", "tirx.sinh"}


def _calls_scalar_only(block) -> bool:
    if not isinstance(block.body, tvm.tirx.BufferStore):
        return False
    found: list = []

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.Call) and getattr(expr.op, "name", "") in _SCALAR_ONLY:
            found.append(expr)

    _walk(block.body.value, visit)
    return bool(found)


def schedule_injective(sch: Schedule, rv, info: CpuInfo, parallel: bool = True) -> None:
    """Fuse, vectorize the innermost run by the widest SIMD width that divides it, parallel."""
    loops = list(sch.get_loops(rv))
    if not loops:
        return
    extents = [_int(sch.get(lp).extent) for lp in loops]
    if any(e is None for e in extents):
        return
    total = 1
    for e in extents:
        total *= e
    block = sch.get(rv)
    run = _contiguous_suffix(block, extents) if len(loops) == len(block.iter_vars) else 1
    if run > 1:
        inner = sch.fuse(*loops[-run:])
        inner_ext = 1
        for e in extents[-run:]:
            inner_ext *= e
        loops = loops[:-run] + [inner]
        extents = extents[:-run] + [inner_ext]
    inner_ext = extents[-1]
    width = 1 if _calls_scalar_only(block) else _vector_width(inner_ext, info.lanes)
    outer_loops = loops[:-1]
    if width > 1:
        if inner_ext > width:
            rest, vec = sch.split(loops[-1], [None, width])
            outer_loops.append(rest)
        else:
            vec = loops[-1]
        sch.vectorize(vec)
    else:
        outer_loops.append(loops[-1])
    if parallel and outer_loops and total >= MIN_PARALLEL_ELEMS:
        fused = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        sch.parallel(fused)


def _split_epilogue(
    sch: Schedule, views: list[BlockView], main: BlockView
) -> tuple[list[BlockView], list[BlockView]]:
    idx = next(i for i, v in enumerate(views) if v.block.same_as(main.block))
    return views[:idx], views[idx + 1 :]


PREPACK_ATTR = "meta_schedule.layout_rewrite_preproc"


def _tile_writer(sch: Schedule, main_rv, consumers: list[BlockView], info: CpuInfo):
    """The block that stores each tile's accumulators: the fused epilogue, or a write cache.

    The epilogue chain is inlined into its last block. That block is computed per tile only
    when it is elementwise on the tile (same indices, no larger domain); anything else (a pad,
    a transpose) runs on its own afterwards, or reverse_compute_at would silently leave the
    outputs outside the tiles unwritten.
    """
    for v in consumers[:-1]:
        sch.compute_inline(v.rv)
    if consumers:
        last = _view(sch, consumers[-1].rv)
        if _elementwise_on(last, sch.get(main_rv).writes[0].source):
            sch.set_scope(main_rv, 0, "local")
            return last.rv
        if _is_pad(last):
            _schedule_pad(sch, last, info)
        else:
            schedule_injective(sch, last.rv, info)
    return sch.cache_write(main_rv, 0, "local")


def _elementwise_on(view: BlockView, buf) -> bool:
    """The block reads `buf` only at the indices it writes, within `buf`'s shape."""
    store = view.store()
    if store is None:
        return False
    out_vars = _plain_vars(store.indices)
    if out_vars is None or None in out_vars:
        return False
    loads = [ld for ld in _loads(store.value) if ld.source.same_as(buf)]
    if not loads:
        return False
    for ld in loads:
        if len(ld.indices) != len(out_vars) or any(
            not (isinstance(i, tirx.Var) and i.same_as(v)) for i, v in zip(ld.indices, out_vars)
        ):
            return False
    extent = {iv.var: _int(iv.dom.extent) for iv in view.block.iter_vars}
    shape = [_int(d) for d in buf.ty.shape]
    return all(
        extent.get(v) is not None and dim is not None and extent[v] <= dim
        for v, dim in zip(out_vars, shape)
    )


def _mark_prepack(sch: Schedule, pack, func: tirx.PrimFunc) -> None:
    """Mark a packing block that reads a function parameter as a layout rewrite.

    `relax.transform.SplitLayoutRewritePreproc` then moves it into its own function called
    from Relax, and FoldConstant packs constant weights once at compile time instead of on
    every call (the mechanism MetaSchedule's RewriteLayout uses).
    """
    block = sch.get(pack)
    if len(block.reads) == 1 and any(block.reads[0].source.same_as(p) for p in func.params):
        sch.annotate(pack, PREPACK_ATTR, True)


# --------------------------------------------------------------------------------------------
# Rule: matmul / dense / batch matmul


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


def _product_operands(store) -> list | None:
    """`C[..] = C[..] + X * Y` (casts allowed) -> the loads of X and Y."""
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    for acc, prod in ((value.a, value.b), (value.b, value.a)):
        acc_s = _strip_cast(acc)
        if not (isinstance(acc_s, tvm.ir.TensorLoad) and acc_s.source.same_as(store.buffer)):
            continue
        prod = _strip_cast(prod)
        if not isinstance(prod, tirx.Mul):
            return None
        xs, ys = _loads(prod.a), _loads(prod.b)
        if len(xs) != 1 or len(ys) != 1:
            return None
        return [xs[0], ys[0]]
    return None


def _plain_vars(indices) -> list | None:
    out = []
    for idx in indices:
        if isinstance(idx, tirx.Var):
            out.append(idx)
        elif isinstance(idx, tirx.IntImm):
            out.append(None)
        else:
            return None
    return out


def matmul_shape(view: BlockView) -> MatmulShape | None:
    """Classify the iterators of `C[b.., i.., j] += A[b.., i.., k] * B[b.., k, j]`."""
    store = view.store()
    if store is None or view.kinds.count("R") != 1 or not view.is_reduction:
        return None
    operands = _product_operands(store)
    if operands is None:
        return None
    ivars = [iv.var for iv in view.block.iter_vars]
    out_vars = _plain_vars(store.indices)
    if out_vars is None or None in out_vars or len(set(out_vars)) != len(out_vars):
        return None
    a_vars = [_plain_vars(ld.indices) for ld in operands]
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


def _single_reduction(sch: Schedule, shape_of):
    """The one reduction block with spatial-only producers/consumers and static extents.

    Returns (views, block, shape, producers, consumers, extents), or None when the function
    has another structure (the rule then does not apply).
    """
    views = root_blocks(sch)
    if not simple_structure(sch, views):
        return None
    reductions = [v for v in views if not v.is_spatial]
    if len(reductions) != 1:
        return None
    block = reductions[0]
    shape = shape_of(block)
    if shape is None:
        return None
    producers, consumers = _split_epilogue(sch, views, block)
    if not all(v.is_spatial for v in producers + consumers):
        return None
    ext = block.extents()
    if any(e is None for e in ext):
        return None
    return views, block, shape, producers, consumers, ext


def schedule_matmul(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo) -> bool:
    found = _single_reduction(sch, matmul_shape)
    if found is None:
        return False
    views, mm, shape, producers, consumers, ext = found
    m = 1
    for p in shape.rows:
        m *= ext[p]
    n = ext[shape.col]
    batch = 1
    for p in shape.batch:
        batch *= ext[p]

    lanes = info.lanes
    # Columns per tile: two SIMD registers when N allows, one, or all of a small N.
    if n % (2 * lanes) == 0:
        nr, n_pad = 2 * lanes, 1
    elif n % lanes == 0:
        nr, n_pad = lanes, 1
    elif n < lanes:
        nr, n_pad = n, 1
    else:
        nr = 2 * lanes if n > 4 * lanes else lanes
        n_pad = nr
        if m < 16:
            # Few rows (GEMV-like, e.g. a classifier): padding N would copy all of B on every
            # call. Use a tile width that divides N instead, if one is a multiple of 4.
            fits = [d for d in _divisors(n) if d <= 2 * lanes and d % 4 == 0]
            if fits:
                nr, n_pad = fits[-1], 1
    n_regs = -(-nr // lanes)
    mr_max = max(1, info.accumulators // n_regs)
    # Several row axes (e.g. [batch, seq] x weight) are fused; padding the innermost one to a
    # multiple of mr makes the fused count one too.
    mr, pad_rows = _pick_rows(m, mr_max)

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
        before = {v.name for v in root_blocks(sch)}
        sch.pad_einsum(mm.rv, padding)
        mm = next(v for v in root_blocks(sch) if v.name == mm.name)
        c_buf = mm.block.writes[0].source
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
        ext = mm.extents()
        m = 1
        for p in shape.rows:
            m *= ext[p]
        n = ext[shape.col]

    out_rv = _tile_writer(sch, mm.rv, consumers, info)

    # 2. Pack B into [j // nr, k, j % nr] panels when enough rows reuse it.
    b_buf = sch.get(mm.rv).reads[shape.b_index].source
    b_pad = [v for v in pad_blocks if v.block.writes[0].source.same_as(b_buf)]
    ndim = len(b_buf.ty.shape)
    transposed = shape.b_col_dim != ndim - 1
    if m >= 16 or transposed:
        pack = sch.cache_read(mm.rv, shape.b_index, "global")
        cdim, kd = shape.b_col_dim, shape.b_red_dim

        def index_map(*idx):
            others = [x for d, x in enumerate(idx) if d not in (cdim, kd)]
            return (*others, idx[cdim] // nr, idx[kd], idx[cdim] % nr)

        sch.transform_layout(pack, ("write", 0), tirx.IndexMap.from_func(index_map, ndim=ndim))
        for v in b_pad:
            # The zero fill of a padded B happens while packing, not in the inner loop.
            sch.compute_inline(v.rv)
        b_pad = []
        _mark_prepack(sch, pack, func)
        schedule_injective(sch, pack, info)
    pad_names = {v.name for v in pad_blocks}
    for v in root_blocks(sch):
        if v.name in pad_names:
            schedule_injective(sch, v.rv, info)

    # 3. Tile: [batch] x [rows / mr] x [cols / nc] x [nc / nr] x k x mr x nr.
    loops = sch.get_loops(mm.rv)
    batch_loops = [loops[p] for p in shape.batch]
    row_loops = [loops[p] for p in shape.rows]
    col_loop, red_loop = loops[shape.col], loops[shape.red]
    if row_loops:
        row = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
        ro, ri = sch.split(row, [None, mr])
    else:
        ro = ri = None
    panel = nr * max(1, min(64 // nr, (n // nr)))
    while (n // nr) % (panel // nr):
        panel -= nr
    co, cm, ci = sch.split(col_loop, [None, panel // nr, nr])
    order = [*batch_loops, co] + ([ro] if ro is not None else []) + [cm, red_loop]
    order += ([ri] if ri is not None else []) + [ci]
    sch.reorder(*order)
    outer = [*batch_loops, co] + ([ro] if ro is not None else [])
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if batch * m * n * ext[shape.red] >= MIN_PARALLEL_WORK:
        sch.parallel(par)

    sch.reverse_compute_at(out_rv, cm, preserve_unit_loops=True)
    out_loops = sch.get_loops(out_rv)
    if _int(sch.get(out_loops[-1]).extent) not in (None, 1):
        sch.vectorize(out_loops[-1])

    if ri is not None:
        sch.unroll(ri)
    sch.vectorize(ci)
    init = sch.decompose_reduction(mm.rv, red_loop)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    return True


# --------------------------------------------------------------------------------------------
# Rule: convolution (sliding window reduction with a weight)


@dataclass
class WindowShape:
    x: int  # iterator position of the output's innermost axis
    channel: int | None  # iterator position of the output channel (indexes the weight)
    spatial: list[int]  # iterator positions in output order
    reductions: list[int]
    weight_index: int | None = None  # position of the weight in block.reads
    weight_channel_dim: int | None = None  # weight dim indexed by the channel alone
    data_uses_channel: bool = True  # depthwise / grouped: each channel reads its own data
    y: int | None = None  # iterator position of the other sliding axis (rows), if any
    x_stride: int | None = None  # step of the data index per output column
    y_window: int = 1  # window height: input rows one output row reads
    data: object = None  # the buffer the window slides over
    channel_last: bool = False  # NHWC: output channels innermost, columns right before


def window_shape(view: BlockView, need_weight: bool) -> WindowShape | None:
    """`C[.., x] += D[.., x * s + r ..] (* W[f, ..])` with x the output's innermost axis, or
    channel-last `C[.., x, f] += D[.., x * s + r, c] (* W[f, ..])` (NHWC: c a reduction, or f
    itself for depthwise)."""
    shape = _window_shape(view, need_weight, channel_last=False)
    if shape is None and need_weight:
        shape = _window_shape(view, need_weight, channel_last=True)
    return shape


def _window_shape(view: BlockView, need_weight: bool, channel_last: bool) -> WindowShape | None:
    store = view.store()
    if store is None or not view.is_reduction:
        return None
    ivars = [iv.var for iv in view.block.iter_vars]
    out_vars = _plain_vars(store.indices)
    if out_vars is None or None in out_vars or len(set(out_vars)) != len(out_vars):
        return None
    if channel_last and len(out_vars) < 3:
        return None
    x = out_vars[-2] if channel_last else out_vars[-1]
    xpos = -2 if channel_last else -1
    red_vars = {ivars[p] for p, k in enumerate(view.kinds) if k == "R"}
    loads = [ld for ld in _loads(store.value) if not ld.source.same_as(store.buffer)]
    data = [ld for ld in loads if any(x in _vars(i) for i in ld.indices)]
    if len(data) != 1:
        return None
    data = data[0]
    x_dims = [i for i in data.indices if x in _vars(i)]
    if len(data.indices) < -xpos or len(x_dims) != 1 or not x_dims[0].same_as(data.indices[xpos]):
        return None  # x must move along the data's contiguous axis (its last but one: NHWC)
    if not (_vars(x_dims[0]) - {x}) <= red_vars:
        return None
    if channel_last:
        last, f = data.indices[-1], out_vars[-1]
        ext = view.extents()
        unit = {ivars[p] for p, e in enumerate(ext) if e == 1}
        plain_channel = isinstance(last, tirx.Var) and last in red_vars
        depthwise = _linear_coef(last, f) == 1 and (_vars(last) - {f}) <= (red_vars & unit)
        if not (plain_channel or depthwise):
            return None  # the data's innermost axis: input channels, or f (depthwise)
    shape = WindowShape(
        x=ivars.index(x),
        channel=None,
        spatial=[ivars.index(v) for v in out_vars],
        reductions=[p for p, k in enumerate(view.kinds) if k == "R"],
        x_stride=_linear_coef(x_dims[0], x),
        data=data.source,
    )
    shape.channel_last = channel_last
    if len(data.indices) >= 1 - xpos:
        # Rows slide along the data axis right before the columns (NCHW, NCW, NHWC).
        row_idx = data.indices[xpos - 1]
        rows = [v for v in _vars(row_idx) if v in out_vars]
        if len(rows) == 1 and _vars(row_idx) & red_vars and not rows[0].same_as(x):
            shape.y = ivars.index(rows[0])
            ext = view.extents()
            for v in _vars(row_idx) & red_vars:
                shape.y_window *= ext[ivars.index(v)] or 1
    if not need_weight:
        return shape
    operands = _product_operands(store)
    if operands is None:
        return None
    weights = [ld for ld in operands if not ld.same_as(data)]
    if len(weights) != 1 or weights[0].source.same_as(data.source):
        return None
    weight = weights[0]
    w_vars = [v for i in weight.indices for v in _vars(i)]
    w_spatial = [v for v in w_vars if v in out_vars]
    if len(set(w_spatial)) > 1 or x in w_spatial:
        return None
    if w_spatial:
        f = w_spatial[0]
        shape.channel = ivars.index(f)
        shape.data_uses_channel = any(f in _vars(i) for i in data.indices)
        dims = [d for d, i in enumerate(weight.indices) if isinstance(i, tirx.Var) and i.same_as(f)]
        shape.weight_channel_dim = dims[0] if dims else None
    reads = [r.source for r in view.block.reads]
    shape.weight_index = next((n for n, b in enumerate(reads) if b.same_as(weight.source)), None)
    return shape


def _pick_width(x: int, lanes: int) -> int:
    """Output columns per tile: the divisor of x <= one register that fills it best (two
    registers per row ran 10x slower in the width-vectorized conv: LLVM spills)."""
    best, best_key = 1, (-1.0, 0)
    for d in _divisors(x):
        if d > lanes:
            break
        regs = -(-d // lanes)
        key = (d / (regs * lanes), d)
        if key > best_key:
            best, best_key = d, key
    return best


def _schedule_pad(sch: Schedule, view: BlockView, info: CpuInfo) -> None:
    """A copy that pads nothing is inlined; a real pad becomes a zero fill plus an interior
    copy without conditions (`decompose_padding`), both parallel and vectorized."""
    store = view.store()
    if store is not None and not _has_if_then_else(store.value):
        sch.compute_inline(view.rv)
        return
    try:
        fill = sch.decompose_padding(view.rv, sch.get_loops(view.rv)[0])
    except Exception:  # noqa: BLE001 - not a pad pattern: one conditional copy
        fill = None
    if fill is not None:
        schedule_injective(sch, fill, info)
    schedule_injective(sch, view.rv, info)


@dataclass(frozen=True)
class ChannelTile:
    """Channel-vectorized conv tile: `vectors` SIMD vectors of `lanes` channels x `width`
    output pixels of accumulators."""

    lanes: int
    vectors: int
    width: int


def _channel_tile(shape: WindowShape, ext: list[int], info: CpuInfo) -> ChannelTile | None:
    """The channel-vectorized tile, or None if it does not fit.

    Needs a weight indexed by the output channel alone and data shared by every output
    channel (regular and pointwise conv; not depthwise or grouped). Channel counts that are no
    multiple of the SIMD width (24, 40, ...) use half or quarter registers.
    """
    if (
        shape.channel is None
        or (shape.data_uses_channel and not shape.channel_last)
        or shape.weight_channel_dim is None
        or shape.weight_index is None
    ):
        return None
    f = ext[shape.channel]
    lanes = info.lanes
    while lanes >= 4 and f % lanes:
        lanes //= 2
    if lanes < 4:
        return None
    # Up to two full registers of channels per tile.
    vectors = max(d for d in _divisors(f // lanes) if d * lanes <= 2 * info.lanes)
    limit = max(1, info.accumulators // vectors)
    width = max(d for d in _divisors(ext[shape.x]) if d <= limit)
    if width < min(4, ext[shape.x]):
        return None
    return ChannelTile(lanes, vectors, width)


def schedule_window(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo, need_weight: bool) -> bool:
    found = _single_reduction(sch, lambda block: window_shape(block, need_weight))
    if found is None:
        return False
    views, conv, shape, producers, consumers, ext = found

    tile = _channel_tile(shape, ext, info) if need_weight else None
    phased = _phase_split_pad(shape, producers, ext, info)
    if tile is not None and _width_beats_channels(shape, ext, info, phased is not None):
        tile = None
    if tile is not None:
        phased = None
    # Data read per output channel (depthwise, pooling): pad it channel by channel, in cache,
    # right before the channel is convolved. Shared data (regular conv): pad it once.
    per_channel = not need_weight or shape.data_uses_channel
    local_pads = [p for p in producers if per_channel and tile is None and _is_pad(p)]
    odd = phased is not None and _int(shape.data.ty.shape[-1]) % shape.x_stride != 0
    if phased is not None and odd:
        # An odd padded width needs the pad decomposed before the layout change, and
        # decomposed pads cannot move into the channel loop: pad the whole input once.
        local_pads = []
        fill = _apply_phase_split(sch, phased, shape.x_stride, decompose=True)
        _unroll_phases(sch, [fill, phased.rv], info)
    elif phased is not None:
        _apply_phase_split(sch, phased, shape.x_stride, decompose=False)
        if not local_pads:
            fill = sch.decompose_padding(phased.rv, sch.get_loops(phased.rv)[0])
            _unroll_phases(sch, [fill, phased.rv], info)
    if phased is not None:
        shape.x_stride = 1  # the conv now reads each phase with unit stride
    for p in producers:
        if not any(p.block.same_as(q.block) for q in local_pads):
            if phased is None or not p.block.same_as(phased.block):
                _schedule_pad(sch, p, info)

    conv_rv = conv.rv
    out_rv = _tile_writer(sch, conv_rv, consumers, info)

    if tile is not None:
        _conv_channel_vector(sch, func, conv_rv, out_rv, shape, ext, info, tile)
    else:
        _conv_width_vector(sch, conv_rv, out_rv, shape, ext, info, local_pads, phased is not None)
    return True


# Reductions shorter than this many SIMD widths per output store the tile width-vectorized.
WIDTH_MAX_REDUCTION = 8


def _width_beats_channels(shape: WindowShape, ext: list[int], info: CpuInfo, phased: bool) -> bool:
    """Output width in lanes beats output channels in lanes when each output sums few terms.

    Channel-vectorized accumulators are channel-last and leave the tile as scalar, transposed
    stores into NCHW: one store per channel per pixel, as many as the FMAs themselves when the
    reduction is short (a 1x1 conv over 16 channels, 112x112 maps: 2.5x slower; the 3x3 stride
    2 stem over 3 channels). Width-vectorized tiles store whole vectors; they need unit stride
    (or a phase-split input) and a width of whole vectors.
    """
    return (
        not shape.channel_last
        and (shape.x_stride == 1 or phased)
        and _pick_width(ext[shape.x], info.lanes) * 4 >= 3 * info.lanes
        and _reduction_size(shape, ext) < WIDTH_MAX_REDUCTION * info.lanes
    )


def _phase_split_pad(shape: WindowShape, producers, ext, info: CpuInfo) -> BlockView | None:
    """The pad feeding a stride-s window whose output is wide enough to vectorize."""
    s = shape.x_stride
    if shape.channel_last or s is None or s < 2 or s > 4 or ext[shape.x] < info.lanes // 2:
        return None
    for p in producers:
        if _is_pad(p) and p.block.writes[0].source.same_as(shape.data):
            return p if _int(shape.data.ty.shape[-1]) is not None else None
    return None


def _apply_phase_split(sch: Schedule, pad: BlockView, s: int, decompose: bool):
    """Store the padded input as `s` phases, `[.., y, x % s, x // s]`.

    A stride-s window then reads `[.., x*s + rx]` as `[.., rx % s, x + rx // s]`: unit stride,
    so a vector of outputs loads whole vectors (a strided TIR vector load is a gather). With
    `decompose` the pad first becomes a zero fill plus an unconditional copy (returns the
    fill): the layout change of an odd padded width (TF-style pads) adds a zero column no
    window reads, which decompose_padding cannot take apart afterwards.
    """
    fill = sch.decompose_padding(pad.rv, sch.get_loops(pad.rv)[0]) if decompose else pad.rv

    def phases(*idx):
        return (*idx[:-1], idx[-1] % s, idx[-1] // s)

    buf = pad.block.writes[0].source
    index_map = tirx.IndexMap.from_func(phases, ndim=len(buf.ty.shape))
    if _int(buf.ty.shape[-1]) % s:
        zero = tirx.const(0.0, buf.dtype)
        sch.transform_layout(fill, ("write", 0), index_map, pad_value=zero)
    else:
        sch.transform_layout(fill, ("write", 0), index_map)
    return fill


def _unroll_phases(sch: Schedule, blocks, info: CpuInfo | None = None) -> None:
    """Rows of the fill and the copy split by two and unrolled, left to LLVM, which vectorizes
    the copy's interleaved loads with shuffles; whole-tensor ones (`info`) also parallel."""
    for block in blocks:
        loops = sch.get_loops(block)
        if info is not None and len(loops) > 2:
            extents = [_int(sch.get(lp).extent) or 1 for lp in loops]
            if _product(extents) >= MIN_PARALLEL_ELEMS:
                sch.parallel(sch.fuse(*loops[:-2]))
                loops = sch.get_loops(block)
        extent = _int(sch.get(loops[-1]).extent)
        if extent is not None and extent % 2 == 0 and extent > 2:
            _, inner = sch.split(loops[-1], [None, 2])
            sch.unroll(inner)


def _reduction_size(shape: WindowShape, ext: list[int]) -> int:
    size = 1
    for p in shape.reductions:
        size *= ext[p]
    return size


def _is_pad(view: BlockView) -> bool:
    store = view.store()
    return store is not None and _has_if_then_else(store.value)


def _parallel_outer(sch: Schedule, loops: list, work: int) -> None:
    if loops and work >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _conv_channel_vector(sch, func, conv_rv, out_rv, shape, ext, info, tile: ChannelTile) -> None:
    """Output channels in SIMD lanes, `width` output pixels unrolled: each input value is
    broadcast once per tile row, each weight vector loaded once per tile.

    The weight is packed to [f // fi, .., f % fi] and the accumulators laid out channel-last so
    the lanes are contiguous; any stride or dilation works, the data is only broadcast.
    """
    lanes, fv, width = tile.lanes, tile.vectors, tile.width
    fi = fv * lanes
    wdim = shape.weight_channel_dim
    wbuf = sch.get(conv_rv).reads[shape.weight_index].source
    ndim = len(wbuf.ty.shape)

    def pack_map(*idx):
        rest = [v for d, v in enumerate(idx) if d != wdim]
        return (idx[wdim] // fi, *rest, idx[wdim] % fi)

    pack = sch.cache_read(conv_rv, shape.weight_index, "global")
    sch.transform_layout(pack, ("write", 0), tirx.IndexMap.from_func(pack_map, ndim=ndim))
    _mark_prepack(sch, pack, func)
    schedule_injective(sch, pack, info)

    cpos = shape.spatial.index(shape.channel)
    out_ndim = len(shape.spatial)

    def acc_map(*idx):
        return (*[v for d, v in enumerate(idx) if d != cpos], idx[cpos])

    loops = sch.get_loops(conv_rv)
    fo, fin = sch.split(loops[shape.channel], [None, fi])
    xo, xi = sch.split(loops[shape.x], [None, width])
    outer = []
    for p in shape.spatial:
        if p == shape.channel:
            outer.append(fo)
        elif p != shape.x:
            outer.append(loops[p])
    red = [loops[p] for p in shape.reductions]
    sch.reorder(*outer, xo, *red, xi, fin)
    elems = 1
    for p in shape.spatial:
        elems *= ext[p]
    _parallel_outer(sch, outer, elems * _reduction_size(shape, ext))
    sch.reverse_compute_at(out_rv, xo, preserve_unit_loops=True)
    out_loops = sch.get_loops(out_rv)
    if _int(sch.get(out_loops[-1]).extent) not in (None, 1):
        sch.vectorize(out_loops[-1])
    sch.unroll(xi)
    f_regs, f_lanes = sch.split(fin, [fv, lanes])
    sch.unroll(f_regs)
    sch.vectorize(f_lanes)
    sch.transform_layout(conv_rv, ("write", 0), tirx.IndexMap.from_func(acc_map, ndim=out_ndim))
    init = sch.decompose_reduction(conv_rv, red[0])
    sch.vectorize(sch.get_loops(init)[-1])


def _conv_width_vector(sch, conv_rv, out_rv, shape, ext, info, local_pads, phased) -> None:
    """Output width in SIMD lanes (depthwise, grouped, pooling, channel counts that are no
    multiple of the SIMD width).

    A tile of `fi` channels x `yb` rows x one register of columns, with the window loops
    unrolled so rows shared by neighbouring outputs are loaded once. Strided convs over wide
    outputs keep the block's own loop order instead, which LLVM vectorizes with shuffles (a
    strided TIR vector load is a gather: slower there), and only gain parallelism and locality.
    """
    lanes = info.lanes
    loops = sch.get_loops(conv_rv)
    outer_pos = [p for p in shape.spatial if p not in (shape.x, shape.y)]
    elems = 1
    for p in shape.spatial:
        elems *= ext[p]

    if shape.x_stride != 1 and ext[shape.x] >= 2 * lanes:
        outer = [loops[p] for p in outer_pos]
        sch.reorder(*outer, *[loops[p] for p in shape.spatial if p not in outer_pos])
        par = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else None)
        if par is not None and elems * _reduction_size(shape, ext) >= MIN_PARALLEL_WORK:
            sch.parallel(par)
        for p in local_pads:
            sch.compute_at(p.rv, par) if par is not None else None
            _vectorize_row(sch, p.rv, info)
        at = loops[shape.y] if shape.y is not None else par
        if at is not None:
            sch.reverse_compute_at(out_rv, at, preserve_unit_loops=True)
            out_loops = sch.get_loops(out_rv)
            if _int(sch.get(out_loops[-1]).extent) not in (None, 1):
                sch.vectorize(out_loops[-1])
        return

    xw = _pick_width(ext[shape.x], lanes)
    budget = 8
    yb = 1
    fi = 1
    if shape.y is not None:
        # Strided rows share fewer input rows: a short row block is enough.
        # Rows only share inputs under a window taller than one row.
        rows = 1 if shape.y_window == 1 else 2 if phased or shape.x_stride != 1 else budget
        yb = max(d for d in _divisors(ext[shape.y]) if d <= rows)
    if shape.channel is not None and not shape.data_uses_channel:
        fi = max(d for d in _divisors(ext[shape.channel]) if d <= max(1, budget // yb))

    xo, xi = sch.split(loops[shape.x], [None, xw])
    yo = yi = None
    if shape.y is not None:
        yo, yi = sch.split(loops[shape.y], [None, yb])
    fi_loop = None
    outer = []
    for p in outer_pos:
        if p == shape.channel and fi > 1:
            fo, fi_loop = sch.split(loops[p], [None, fi])
            outer.append(fo)
        else:
            outer.append(loops[p])
    red = [loops[p] for p in shape.reductions]
    tile = [lp for lp in (fi_loop, yi) if lp is not None] + [xi]
    sch.reorder(*outer, *([yo] if yo is not None else []), xo, *red, *tile)
    par = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else None)
    if par is not None and elems * _reduction_size(shape, ext) >= MIN_PARALLEL_WORK:
        sch.parallel(par)
    for p in local_pads:
        if par is not None:
            sch.compute_at(p.rv, par)
        if phased:
            at = sch.get_loops(p.rv)[1 if par is not None else 0]
            _unroll_phases(sch, [sch.decompose_padding(p.rv, at), p.rv])
        else:
            _vectorize_row(sch, p.rv, info)

    sch.reverse_compute_at(out_rv, xo, preserve_unit_loops=True)
    out_loops = sch.get_loops(out_rv)
    if _int(sch.get(out_loops[-1]).extent) not in (None, 1):
        sch.vectorize(out_loops[-1])

    # Unroll the window (3x3, 5x5, ...) so LLVM sees which loaded rows repeat.
    window = [lp for lp, p in zip(red, shape.reductions) if ext[p] > 1]
    size = 1
    for p in shape.reductions:
        size *= ext[p]
    for lp in tile[:-1]:
        sch.unroll(lp)
    if size <= 64:
        for lp in window[-2:]:
            sch.unroll(lp)
    if xw > 1:
        sch.vectorize(xi)
    init = sch.decompose_reduction(conv_rv, red[0])
    if xw > 1:
        sch.vectorize(sch.get_loops(init)[-1])


def _vectorize_row(sch: Schedule, rv, info: CpuInfo) -> None:
    """Vectorize the innermost loop of a block placed under another loop (a padded row)."""
    loops = sch.get_loops(rv)
    if not loops:
        return
    extent = _int(sch.get(loops[-1]).extent)
    if extent is None or extent == 1:
        return
    if extent <= 8 * info.lanes:
        sch.vectorize(loops[-1])
        return
    width = _vector_width(extent, info.lanes)
    if width > 1:
        _, vec = sch.split(loops[-1], [None, width])
        sch.vectorize(vec)


# --------------------------------------------------------------------------------------------
# Rule: reductions (softmax, layer norm, mean, pooling, sums)


def schedule_reduction(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo, target) -> bool:
    views = root_blocks(sch)
    if not any(not v.is_spatial for v in views):
        return False
    from tvm.s_tir.dlight.cpu import Reduction

    work = max(_product(v.extents()) for v in views)
    if work < MIN_PARALLEL_ELEMS:
        # dlight always goes parallel; too small to pay for waking the thread pool.
        return _schedule_outer_parallel(sch, info, parallel=False)
    try:
        dl = Reduction().apply(func, target, False)
    except Exception:  # noqa: BLE001 - dlight raises on patterns it half-matches
        dl = None
    if isinstance(dl, Schedule):
        return dl
    return _schedule_outer_parallel(sch, info)


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v if v is not None else 1
    return out


def _schedule_outer_parallel(sch: Schedule, info: CpuInfo, parallel: bool = True) -> bool:
    """Last resort for reductions: inline what can be, parallel over leading spatial loops."""
    views = root_blocks(sch)
    if not simple_structure(sch, views):
        return False
    changed = False
    for v in views[:-1]:
        if v.is_spatial:
            try:
                sch.compute_inline(v.rv)
                changed = True
            except Exception:  # noqa: BLE001 - keep blocks that cannot be inlined
                pass
    for v in root_blocks(sch):
        lead = []
        for lp, kind in zip(v.loops, v.kinds):
            if kind != "S":
                break
            lead.append(lp)
        if v.is_spatial:
            schedule_injective(sch, v.rv, info, parallel=parallel)
            changed = True
            continue
        if not lead or not parallel:
            continue
        total = 1
        for lp in lead:
            total *= _int(sch.get(lp).extent) or 1
        if total >= 2:
            fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
            sch.parallel(fused)
            changed = True
    return changed


# --------------------------------------------------------------------------------------------
# Rule: elementwise / injective


def schedule_elementwise(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo) -> bool:
    views = root_blocks(sch)
    if not views or not all(v.is_spatial for v in views):
        return False
    if not simple_structure(sch, views) or any(None in v.extents() for v in views):
        return False  # symbolic shapes: left as they are
    for v in views[:-1]:
        try:
            sch.compute_inline(v.rv)
        except Exception:  # noqa: BLE001 - a block read twice in odd ways stays separate
            pass
    for v in root_blocks(sch):
        if _is_pad(v):
            _schedule_pad(sch, v, info)  # a zero fill plus a copy without conditions
        else:
            schedule_injective(sch, v.rv, info)
    return True


# --------------------------------------------------------------------------------------------
# Driver


RULES = ("matmul", "conv", "window", "reduction", "elementwise")


@dataclass
class Outcome:
    rule: str | None  # the rule that scheduled the function; None if untouched
    func: tirx.PrimFunc
    errors: list[str]  # rules that raised on the way (their changes were dropped)
    prepack: bool = False  # has blocks marked for SplitLayoutRewritePreproc


def schedule_func(
    func: tirx.PrimFunc, info: CpuInfo, target, enabled: set[str] | None = None
) -> Outcome:
    """Try the rules in order on one PrimFunc; the first that applies wins.

    A rule that raises is dropped (its half-done schedule with it) and the next one tried, so
    the result is always either a complete schedule or the function exactly as it was.
    """
    attempts: list[tuple[str, Callable]] = [
        ("matmul", lambda s: schedule_matmul(s, func, info)),
        ("conv", lambda s: schedule_window(s, func, info, need_weight=True)),
        ("window", lambda s: schedule_window(s, func, info, need_weight=False)),
        ("reduction", lambda s: schedule_reduction(s, func, info, target)),
        ("elementwise", lambda s: schedule_elementwise(s, func, info)),
    ]
    errors: list[str] = []
    for name, attempt in attempts:
        if enabled is not None and name not in enabled:
            continue
        sch = Schedule(func)
        try:
            done = attempt(sch)
        except Exception as err:  # noqa: BLE001 - any schedule error: drop this rule
            lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            errors.append(f"{name}: {lines[-1] if lines else type(err).__name__}")
            continue
        if isinstance(done, Schedule):
            sch, done = done, True
        if done:
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            prepack = any(PREPACK_ATTR in sch.get(b).annotations for b in blocks)
            new = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
            return Outcome(name, new, errors, prepack)
    return Outcome(None, func, errors)
