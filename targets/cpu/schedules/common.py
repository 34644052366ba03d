"""What the CPU schedule rules share.

The CPU description (`CpuInfo`), the block views and expression helpers of
`graphopt.tir_blocks` (re-exported: every target's rules use them), injective scheduling (fuse,
vectorize, parallel), and the pieces of the reduction rules: the single reduction with its
producers and epilogue, the block that stores each tile, weight-prepack marking, a rule's
`Outcome`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.tir_blocks import (  # noqa: F401 - the CPU rules use them as common.*
    BlockView,
    binding,
    buffer_loads,
    const_int,
    free_vars,
    product_operands,
    root_blocks,
    view_of,
    walk,
)

SCHEDULED_ATTR = "tirx.is_scheduled"


# Below this much work a kernel runs on one thread: waking the thread pool costs several
# microseconds (more without spinning workers), more than small kernels take. Work is
# multiply-adds for matmul / conv (output elements x reduction size), elements otherwise.
MIN_PARALLEL_WORK = 1 << 20


MIN_PARALLEL_ELEMS = 1 << 16


PREPACK_ATTR = "meta_schedule.layout_rewrite_preproc"


@dataclass(frozen=True)
class CpuInfo:
    """What the schedules need to know about the CPU: SIMD width, registers and cores."""

    lanes: int  # fp32 lanes of one SIMD register
    registers: int  # SIMD registers
    cores: int
    # Per-core L2 the blocking plans for. LLVM targets do not say; 1 MiB is Zen 4/5's, and
    # the smallest among recent server cores (Intel: 2 MiB; Cortex-A72 boards: 1 MiB shared).
    l2_bytes: int = 1 << 20
    # Schedule symbolic extents (a build with --input-shape ranges: schedules/symbolic.py).
    # Off, kernels of run-time shapes (NonZero, a Resize of computed size) stay as they are.
    symbolic: bool = False
    # Take every kernel's work as worth threads: its sizes are symbolic beyond a batch (an
    # image's height and width) and it is planned at a nominal size that may be far below the
    # sizes it runs at (MobileNetV2's 7x7 maps at 224 pixels are 4x4 at the nominal 128).
    large_work: bool = False

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


def _has_if_then_else(expr) -> bool:
    hit = []

    def visit(e):
        if isinstance(e, tvm.ir.Call) and str(getattr(e.op, "name", "")).endswith("if_then_else"):
            hit.append(e)
        if isinstance(e, tirx.Select):
            hit.append(e)

    walk(expr, visit)
    return bool(hit)


def product(values) -> int:
    out = 1
    for v in values:
        out *= v if v is not None else 1
    return out


def divisors(n: int) -> list[int]:
    """Divisors of n, increasing, in O(sqrt n): n is whatever extent a model declares."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def vector_width(extent: int, lanes: int) -> int:
    """Largest power of two <= lanes dividing extent (1 when extent is odd)."""
    v = lanes
    while v > 1 and extent % v:
        v //= 2
    return v


def _trivially_bound(sch: Schedule, view: BlockView) -> bool:
    """One loop per block iterator, in order, each bound directly (the legalized form)."""
    loops = [sch.get(lp) for lp in view.loops]
    if len(loops) != len(view.block.iter_vars):
        return False
    values = binding(sch, view)
    for loop, iv, value in zip(loops, view.block.iter_vars, values):
        if not value.same_as(loop.loop_var):
            return False
        if const_int(loop.min) != 0 or const_int(loop.extent) != const_int(iv.dom.extent):
            return False
    # Perfect nesting: each loop's body is the next loop, the innermost's the block.
    for outer, inner in zip(loops, loops[1:]):
        if not outer.body.same_as(inner):
            return False
    return True


def simple_structure(sch: Schedule, views: Sequence[BlockView]) -> bool:
    """Every root block sits alone in its own perfect, trivially bound loop nest."""
    for v in views:
        if v.store() is None or not _trivially_bound(sch, v):
            return False
        if not all(k in "SR" for k in v.kinds):
            return False
    return True


def plain_vars(indices) -> list | None:
    out = []
    for idx in indices:
        if isinstance(idx, tirx.Var):
            out.append(idx)
        elif isinstance(idx, tirx.IntImm):
            out.append(None)
        else:
            return None
    return out


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
    accesses += [(ld.source, list(ld.indices)) for ld in buffer_loads(store.value)]
    count = 1
    for t in range(2, len(ivars) + 1):
        tail = ivars[-t:]
        ok = True
        for buf, idx in accesses:
            used = set()
            for i in idx:
                used |= free_vars(i)
            if not used & set(tail):
                continue
            shape = [const_int(d) for d in buf.ty.shape][-t:]
            if len(idx) < t or any(
                not (isinstance(i, tirx.Var) and i.same_as(v)) for i, v in zip(idx[-t:], tail)
            ):
                ok = False
                break
            if shape != loop_extents[-t:]:
                ok = False
                break
            if any(v in used for v in ivars[:-t] if any(v in free_vars(i) for i in idx[-t:])):
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

    walk(block.body.value, visit)
    return bool(found)


def schedule_injective(sch: Schedule, rv, info: CpuInfo, parallel: bool = True) -> None:
    """Fuse, vectorize the innermost run by the widest SIMD width that divides it, parallel."""
    loops = list(sch.get_loops(rv))
    if not loops:
        return
    extents = [const_int(sch.get(lp).extent) for lp in loops]
    if any(e is None for e in extents):
        if info.symbolic:
            from graphopt.targets.cpu.schedules.symbolic import schedule_injective_symbolic

            schedule_injective_symbolic(sch, rv, info, parallel)
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
    width = 1 if _calls_scalar_only(block) else vector_width(inner_ext, info.lanes)
    outer_loops = loops[:-1]
    if width > 1:
        if inner_ext > width:
            rest, vec = sch.split(loops[-1], [None, width])
            outer_loops.append(rest)
        else:
            vec = loops[-1]
        sch.vectorize(vec)
    else:
        # Nothing to vectorize (a transpose to a 3-channel last axis): the parallel loop
        # takes the leading loops only; fused with the inner ones it would recompute every
        # index with a division per element (the NCHW -> NHWC input transpose: 4x slower).
        lead = 1
        while lead < len(loops) - 1 and product(extents[:lead]) < 8 * info.cores:
            lead += 1
        outer_loops = loops[:lead] if len(loops) > 1 else loops
        if len(loops) > 1 and extents[-1] <= 8:
            sch.unroll(loops[-1])
    if parallel and outer_loops and total >= MIN_PARALLEL_ELEMS:
        fused = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        sch.parallel(fused)


def is_pad(view: BlockView) -> bool:
    store = view.store()
    return store is not None and _has_if_then_else(store.value)


def schedule_pad(sch: Schedule, view: BlockView, info: CpuInfo, rows: bool = False) -> None:
    """A copy that pads nothing is inlined; a real pad becomes a zero fill plus an interior
    copy without conditions (`decompose_padding`), both parallel and vectorized (`rows`: by
    rows, see `schedule_rows_injective`)."""
    store = view.store()
    if store is not None and not _has_if_then_else(store.value):
        sch.compute_inline(view.rv)
        return
    try:
        fill = sch.decompose_padding(view.rv, sch.get_loops(view.rv)[0])
    except Exception:  # noqa: BLE001 - not a pad pattern: one conditional copy
        fill = None
    schedule = schedule_rows_injective if rows else schedule_injective
    if fill is not None:
        schedule(sch, fill, info)
    schedule(sch, view.rv, info)


def schedule_rows_injective(sch: Schedule, rv, info: CpuInfo) -> None:
    """Rows in parallel, each row's innermost loop vectorized on its own: no loop is fused
    with another, so the schedule replays on a kernel whose height and width are symbolic (a
    vector split of a fused padded height x width x channels fails there)."""
    loops = list(sch.get_loops(rv))
    if len(loops) < 2:
        return
    extent = const_int(sch.get(loops[-1]).extent) or 1
    width = vector_width(extent, info.lanes)
    if width > 1:
        inner = sch.split(loops[-1], [None, width])[1] if extent > width else loops[-1]
        sch.vectorize(inner)
    elif extent <= 8:
        sch.unroll(loops[-1])
    outer = loops[:-2] if len(loops) > 2 else loops[:1]
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _split_epilogue(
    sch: Schedule, views: list[BlockView], main: BlockView
) -> tuple[list[BlockView], list[BlockView]]:
    idx = next(i for i, v in enumerate(views) if v.block.same_as(main.block))
    return views[:idx], views[idx + 1 :]


def single_reduction(sch: Schedule, shape_of, symbolic: bool = False):
    """The one reduction block with spatial-only producers/consumers and static extents
    (`symbolic`: symbolic extents allowed, as None in the extents returned).

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
    if not symbolic and any(e is None for e in ext):
        return None
    return views, block, shape, producers, consumers, ext


def tile_writer(sch: Schedule, main_rv, consumers: list[BlockView], info: CpuInfo):
    """The block that stores each tile's accumulators: the fused epilogue, or a write cache.

    The epilogue chain is inlined into its last block. That block is computed per tile only
    when it is elementwise on the tile (same indices, no larger domain); anything else (a pad,
    a transpose) runs on its own afterwards, or reverse_compute_at would silently leave the
    outputs outside the tiles unwritten.
    """
    for v in consumers[:-1]:
        sch.compute_inline(v.rv)
    if consumers:
        last = view_of(sch, consumers[-1].rv)
        if _elementwise_on(last, sch.get(main_rv).writes[0].source):
            sch.set_scope(main_rv, 0, "local")
            return last.rv
        if is_pad(last):
            schedule_pad(sch, last, info)
        else:
            schedule_injective(sch, last.rv, info)
    return sch.cache_write(main_rv, 0, "local")


def _elementwise_on(view: BlockView, buf) -> bool:
    """The block reads `buf` only at the indices it writes, within `buf`'s shape."""
    store = view.store()
    if store is None:
        return False
    out_vars = plain_vars(store.indices)
    if out_vars is None or None in out_vars:
        return False
    loads = [ld for ld in buffer_loads(store.value) if ld.source.same_as(buf)]
    if not loads:
        return False
    for ld in loads:
        if len(ld.indices) != len(out_vars) or any(
            not (isinstance(i, tirx.Var) and i.same_as(v)) for i, v in zip(ld.indices, out_vars)
        ):
            return False
    extent = {iv.var: const_int(iv.dom.extent) for iv in view.block.iter_vars}
    shape = [const_int(d) for d in buf.ty.shape]
    return all(
        extent.get(v) is not None and dim is not None and extent[v] <= dim
        for v, dim in zip(out_vars, shape)
    )


def mark_prepack(sch: Schedule, pack, func: tirx.PrimFunc) -> None:
    """Mark a packing block that reads a function parameter as a layout rewrite.

    `relax.transform.SplitLayoutRewritePreproc` then moves it into its own function called
    from Relax, and FoldConstant packs constant weights once at compile time instead of on
    every call (the mechanism MetaSchedule's RewriteLayout uses). A buffer of symbolic shape
    (a run-time activation) is packed in place: SplitLayoutRewritePreproc rejects it.
    """
    block = sch.get(pack)
    source = block.reads[0].source if len(block.reads) == 1 else None
    if source is None or any(const_int(d) is None for d in source.ty.shape):
        return
    if any(source.same_as(p) for p in func.params):
        sch.annotate(pack, PREPACK_ATTR, True)


@dataclass
class Outcome:
    rule: str | None  # the rule that scheduled the function; None if untouched
    func: tirx.PrimFunc
    errors: list[str]  # rules that raised on the way (their changes were dropped)
    prepack: bool = False  # has blocks marked for SplitLayoutRewritePreproc
