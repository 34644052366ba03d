"""Rules `conv` and `window`: sliding-window reductions, with a weight (conv) or without.

conv: one reduction block `C[.., f, y, x] += D[.., y*s + ry, x*s + rx] * W[f, ..]` (or its
NHWC form). Regular / pointwise conv, and NHWC depthwise: output channels in SIMD lanes
(weight packed channel-last), a few output pixels unrolled, data broadcast (depthwise: loaded
as vectors): any stride works; NHWC depthwise tasks of a few rows pad their own input rows.
NCHW depthwise / grouped / channel counts that fit no vector: output width in SIMD lanes, a
block of rows unrolled with the window so shared input rows load once, padding done per
channel in cache; strided convs over wide maps keep TVM's loop order (LLVM vectorizes the
strided loads with shuffles). Stride-2..4 windows over wide maps read a phase-split input
(unit stride).

window: the same without a weight (max / avg pooling, sums over outer axes).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import Schedule

from graphopt.targets.cpu.schedules.common import (
    MIN_PARALLEL_ELEMS,
    MIN_PARALLEL_WORK,
    BlockView,
    CpuInfo,
    buffer_loads,
    const_int,
    divisors,
    free_vars,
    is_pad,
    mark_prepack,
    plain_vars,
    product,
    product_operands,
    schedule_injective,
    schedule_pad,
    single_reduction,
    tile_writer,
    vector_width,
)


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
    out_vars = plain_vars(store.indices)
    if out_vars is None or None in out_vars or len(set(out_vars)) != len(out_vars):
        return None
    if channel_last and len(out_vars) < 3:
        return None
    x = out_vars[-2] if channel_last else out_vars[-1]
    xpos = -2 if channel_last else -1
    red_vars = {ivars[p] for p, k in enumerate(view.kinds) if k == "R"}
    loads = [ld for ld in buffer_loads(store.value) if not ld.source.same_as(store.buffer)]
    data = [ld for ld in loads if any(x in free_vars(i) for i in ld.indices)]
    if len(data) != 1:
        return None
    data = data[0]
    x_dims = [i for i in data.indices if x in free_vars(i)]
    if len(data.indices) < -xpos or len(x_dims) != 1 or not x_dims[0].same_as(data.indices[xpos]):
        return None  # x must move along the data's contiguous axis (its last but one: NHWC)
    if not (free_vars(x_dims[0]) - {x}) <= red_vars:
        return None
    if channel_last:
        last, f = data.indices[-1], out_vars[-1]
        ext = view.extents()
        unit = {ivars[p] for p, e in enumerate(ext) if e == 1}
        plain_channel = isinstance(last, tirx.Var) and last in red_vars
        depthwise = _linear_coef(last, f) == 1 and (free_vars(last) - {f}) <= (red_vars & unit)
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
        rows = [v for v in free_vars(row_idx) if v in out_vars]
        if len(rows) == 1 and free_vars(row_idx) & red_vars and not rows[0].same_as(x):
            shape.y = ivars.index(rows[0])
            ext = view.extents()
            for v in free_vars(row_idx) & red_vars:
                shape.y_window *= ext[ivars.index(v)] or 1
    if not need_weight:
        return shape
    operands = product_operands(store)
    if operands is None:
        return None
    weights = [ld for ld in operands if not ld.same_as(data)]
    if len(weights) != 1 or weights[0].source.same_as(data.source):
        return None
    weight = weights[0]
    w_vars = [v for i in weight.indices for v in free_vars(i)]
    w_spatial = [v for v in w_vars if v in out_vars]
    if len(set(w_spatial)) > 1 or x in w_spatial:
        return None
    if w_spatial:
        f = w_spatial[0]
        shape.channel = ivars.index(f)
        shape.data_uses_channel = any(f in free_vars(i) for i in data.indices)
        dims = [d for d, i in enumerate(weight.indices) if isinstance(i, tirx.Var) and i.same_as(f)]
        shape.weight_channel_dim = dims[0] if dims else None
    reads = [r.source for r in view.block.reads]
    shape.weight_index = next((n for n, b in enumerate(reads) if b.same_as(weight.source)), None)
    return shape


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
    return None if var in free_vars(expr) else 0


def _pick_width(x: int, lanes: int) -> int:
    """Output columns per tile: the divisor of x <= one register that fills it best (two
    registers per row ran 10x slower in the width-vectorized conv: LLVM spills)."""
    best, best_key = 1, (-1.0, 0)
    for d in divisors(x):
        if d > lanes:
            break
        regs = -(-d // lanes)
        key = (d / (regs * lanes), d)
        if key > best_key:
            best, best_key = d, key
    return best


# Output pixels per channel-vectorized tile where the width is symbolic: a row's last tile
# is partial (guarded) at most sizes, and narrow tiles waste less of it. MobileNetV2 over a
# symbolic image size at 224 pixels: 1.07x the static build's kernel time with 4, 1.16x with
# 8, 1.19x with up to 16 (14x14 maps run one tile of 8 and a guarded one of 6).
SYMBOLIC_TILE_WIDTH = 4


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
    multiple of the SIMD width (24, 40, ...) use half or quarter registers. A symbolic width
    (`large_work`) takes SYMBOLIC_TILE_WIDTH pixels per tile.
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
    # Up to two full registers of channels per tile; fewer when two leave room for too few
    # pixels: 16 registers (AVX2) hold 2 x 7 accumulators only by spilling, and 2 x 2 of a
    # 14-column map reuse each loaded weight twice. One register x 7 pixels is 1.1-1.5x
    # faster than width tiles on Zen 3 (64 -> 384 and 384 -> 64 on 14x14, 160 -> 960 on 7x7).
    candidates = sorted(
        (d for d in divisors(f // lanes) if d * lanes <= 2 * info.lanes), reverse=True
    )
    for vectors in candidates:
        limit = max(1, info.accumulators // vectors)
        if info.large_work:
            return ChannelTile(lanes, vectors, min(limit, SYMBOLIC_TILE_WIDTH, ext[shape.x]))
        width = max(d for d in divisors(ext[shape.x]) if d <= limit)
        if width >= min(4, ext[shape.x]):
            return ChannelTile(lanes, vectors, width)
    return None


def schedule_window(sch: Schedule, func: tirx.PrimFunc, info: CpuInfo, need_weight: bool) -> bool:
    found = single_reduction(sch, lambda block: window_shape(block, need_weight))
    if found is None:
        return False
    views, conv, shape, producers, consumers, ext = found

    tile = _channel_tile(shape, ext, info) if need_weight else None
    phased = _phase_split_pad(shape, producers, ext, info)
    if tile is not None and _width_beats_channels(shape, ext, info, phased is not None, tile):
        tile = None
    if tile is not None:
        phased = None
    # Data read per output channel (depthwise, pooling): pad it channel by channel, in cache,
    # right before the channel is convolved. Shared data (regular conv): pad it once.
    per_channel = not need_weight or shape.data_uses_channel
    # Channel-last depthwise: each task pads the rows and channels it reads (in cache).
    task_padded = tile is not None and _channel_last_depthwise(shape)
    task_pads = [p for p in producers if task_padded and is_pad(p)]
    local_pads = [p for p in producers if per_channel and tile is None and is_pad(p)]
    local_pads += task_pads
    odd = phased is not None and const_int(shape.data.ty.shape[-1]) % shape.x_stride != 0
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
                schedule_pad(sch, p, info, rows=info.large_work)

    conv_rv = conv.rv
    out_rv = tile_writer(sch, conv_rv, consumers, info)

    if tile is not None:
        _conv_channel_vector(sch, func, conv_rv, out_rv, shape, ext, info, tile, task_pads)
    else:
        _conv_width_vector(sch, conv_rv, out_rv, shape, ext, info, local_pads, phased is not None)
    return True


# Output rows per channel-last depthwise task (half that when strided): 4 rows of a 3x3
# window pad 6 input rows, not 12 (56x56x144: 1.35x faster than one row per task).
DEPTHWISE_ROWS = 4

# Reductions shorter than this many SIMD widths per output store the tile width-vectorized.
WIDTH_MAX_REDUCTION = 4


def _width_beats_channels(
    shape: WindowShape, ext: list[int], info: CpuInfo, phased: bool, tile: ChannelTile
) -> bool:
    """Output width in lanes beats output channels in lanes when each output sums few terms,
    or when the output channels fill only part of a register.

    Channel-vectorized accumulators are channel-last and leave the tile as scalar, transposed
    stores into NCHW: one store per channel per pixel, as many as the FMAs themselves when the
    reduction is short (a 1x1 conv over 16 channels, 112x112 maps: 2.5x slower; the 3x3 stride
    2 stem over 3 channels). From 4 SIMD widths of reduction on, channels win (MobileNetV2's
    64 -> 384 and EfficientNet-Lite0's 112 -> 672 pointwise convs on 14x14 maps: 1.3x faster
    than width tiles of 14 lanes), unless the channels are counted in half registers (24, 40
    channels: width tiles 1.2x faster at 144 -> 24 over 56x56 and 240 -> 40 over 28x28).
    Width-vectorized tiles store whole vectors; they need unit stride (or a phase-split input)
    and a width of whole vectors.
    """
    short = _reduction_size(shape, ext) < WIDTH_MAX_REDUCTION * info.lanes
    return (
        not shape.channel_last
        and (shape.x_stride == 1 or phased)
        and _pick_width(ext[shape.x], info.lanes) * 4 >= 3 * info.lanes
        and (short or tile.lanes < info.lanes)
    )


def _phase_split_pad(shape: WindowShape, producers, ext, info: CpuInfo) -> BlockView | None:
    """The pad feeding a stride-s window whose output is wide enough to vectorize."""
    s = shape.x_stride
    if shape.channel_last or s is None or s < 2 or s > 4 or ext[shape.x] < info.lanes // 2:
        return None
    for p in producers:
        if is_pad(p) and p.block.writes[0].source.same_as(shape.data):
            return p if const_int(shape.data.ty.shape[-1]) is not None else None
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
    if const_int(buf.ty.shape[-1]) % s:
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
            extents = [const_int(sch.get(lp).extent) or 1 for lp in loops]
            if product(extents) >= MIN_PARALLEL_ELEMS:
                sch.parallel(sch.fuse(*loops[:-2]))
                loops = sch.get_loops(block)
        extent = const_int(sch.get(loops[-1]).extent)
        if extent is not None and extent % 2 == 0 and extent > 2:
            _, inner = sch.split(loops[-1], [None, 2])
            sch.unroll(inner)


def _reduction_size(shape: WindowShape, ext: list[int]) -> int:
    size = 1
    for p in shape.reductions:
        size *= ext[p]
    return size


def _work(shape: WindowShape, ext: list[int], info: CpuInfo) -> int:
    """Multiply-adds (the threads' threshold counts them); `large_work`: enough for threads."""
    if info.large_work:
        return 8 * MIN_PARALLEL_WORK
    return product(ext[p] for p in shape.spatial) * _reduction_size(shape, ext)


def _parallel_outer(sch: Schedule, loops: list, work: int) -> None:
    if loops and work >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _channel_last_depthwise(shape: WindowShape) -> bool:
    return shape.channel_last and shape.data_uses_channel


def _conv_channel_vector(
    sch, func, conv_rv, out_rv, shape, ext, info, tile: ChannelTile, task_pads=()
) -> None:
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
    mark_prepack(sch, pack, func)
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
    work = _work(shape, ext, info)
    tasks = product(const_int(sch.get(lp).extent) or 1 for lp in outer)
    at = xo
    if _channel_last_depthwise(shape):
        _depthwise_tasks(sch, outer, loops, shape, ext, info, task_pads, work)
    elif tasks < 4 * info.cores and work >= MIN_PARALLEL_WORK:
        # Too few channel blocks x rows to share among the threads (a flattened 1x1 conv
        # with 32 output channels is one task): the pixel tiles are tasks too.
        at = sch.fuse(*outer, xo)
        sch.parallel(at)
    else:
        _parallel_outer(sch, outer, work)
    sch.reverse_compute_at(out_rv, at, preserve_unit_loops=True)
    out_loops = sch.get_loops(out_rv)
    if const_int(sch.get(out_loops[-1]).extent) not in (None, 1):
        sch.vectorize(out_loops[-1])
    sch.unroll(xi)
    if _channel_last_depthwise(shape):
        # The window unrolled too: columns shared by neighbouring outputs load once.
        for lp in red:
            sch.unroll(lp)
    f_regs, f_lanes = sch.split(fin, [fv, lanes])
    sch.unroll(f_regs)
    sch.vectorize(f_lanes)
    sch.transform_layout(conv_rv, ("write", 0), tirx.IndexMap.from_func(acc_map, ndim=out_ndim))
    init = sch.decompose_reduction(conv_rv, red[0])
    sch.vectorize(sch.get_loops(init)[-1])


def _depthwise_tasks(sch, outer, loops, shape, ext, info, task_pads, work) -> None:
    """Channel-last depthwise: tasks of `rows` output rows x one channel block, in parallel;
    each pads the input rows and channels it reads into a buffer of its own (in cache: no
    pass over a whole padded copy of the input). Several output rows per task share their
    padded input rows."""
    tasks = product(const_int(sch.get(lp).extent) or 1 for lp in outer)
    if shape.y is not None:
        h = ext[shape.y]
        most = DEPTHWISE_ROWS if shape.x_stride == 1 else DEPTHWISE_ROWS // 2
        rows = max(d for d in divisors(h) if d == 1 or (d <= most and tasks // d >= 4 * info.cores))
        if rows > 1:
            yo, yi = sch.split(loops[shape.y], [None, rows])
            outer = [yo if lp.same_as(loops[shape.y]) else lp for lp in outer]
            sch.reorder(*outer, yi)
    task = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    # One load per multiply-add: memory-bound, so threads pay off on 8x less work.
    if work * 8 >= MIN_PARALLEL_WORK:
        sch.parallel(task)
    for p in task_pads:
        sch.compute_at(p.rv, task)
        _vectorize_row(sch, p.rv, info)


def _conv_width_vector(sch, conv_rv, out_rv, shape, ext, info, local_pads, phased) -> None:
    """Output width in SIMD lanes (depthwise, grouped, pooling, channel counts that are no
    multiple of the SIMD width).

    A tile of `fi` channels x `yb` rows x one register of columns, with the window loops
    unrolled so rows shared by neighbouring outputs are loaded once. Strided convs over wide
    outputs keep the block's own loop order instead, which LLVM vectorizes with shuffles (a
    strided TIR vector load is a gather: slower there), and only gain parallelism and locality.
    """
    work = _work(shape, ext, info)
    if shape.x_stride != 1 and ext[shape.x] >= 2 * info.lanes:
        _width_strided(sch, conv_rv, out_rv, shape, work, info, local_pads)
        return
    sizes = _width_tile(shape, ext, info.lanes, phased)
    par, xo, red, tile = _split_width_tile(sch, conv_rv, shape, sizes, work)
    _pads_per_task(sch, local_pads, par, phased, info)
    _tile_writer_at(sch, out_rv, xo)
    # A window that slides over no rows (global pooling) is the whole map: symbolic where the
    # image size is, so not unrolled.
    whole_map = info.large_work and shape.y is None
    _unroll_width_tile(sch, conv_rv, shape, ext, red, tile, sizes[0] > 1, not whole_map)


def _width_strided(sch, conv_rv, out_rv, shape, work, info, local_pads) -> None:
    """Strided, wide: TVM's loop order, which LLVM vectorizes with shuffles (no TIR gathers)."""
    loops = sch.get_loops(conv_rv)
    outer_pos = [p for p in shape.spatial if p not in (shape.x, shape.y)]
    outer = [loops[p] for p in outer_pos]
    sch.reorder(*outer, *[loops[p] for p in shape.spatial if p not in outer_pos])
    par = _task_loop(sch, outer, work)
    _pads_per_task(sch, local_pads, par, False, info)
    at = loops[shape.y] if shape.y is not None else par
    if at is not None:
        _tile_writer_at(sch, out_rv, at)


def _width_tile(shape, ext, lanes, phased) -> tuple[int, int, int]:
    """Tile columns, rows and channels: rows and channels that share input loads, 8 at most."""
    xw = _pick_width(ext[shape.x], lanes)
    budget = 8
    yb = 1
    fi = 1
    if shape.y is not None:
        # Strided rows share fewer input rows: a short row block is enough.
        # Rows only share inputs under a window taller than one row.
        rows = 1 if shape.y_window == 1 else 2 if phased or shape.x_stride != 1 else budget
        yb = max(d for d in divisors(ext[shape.y]) if d <= rows)
    if shape.channel is not None and not shape.data_uses_channel:
        fi = max(d for d in divisors(ext[shape.channel]) if d <= max(1, budget // yb))
    return xw, yb, fi


def _split_width_tile(sch, conv_rv, shape, sizes, work):
    """Order tasks, tiles, window, tile: each tile's sums stay in registers over the window."""
    # Returns the task loop (None if there is none), the column tile loop, the window loops
    # and the tile's loops ([channels], [rows], columns).
    xw, yb, fi = sizes
    loops = sch.get_loops(conv_rv)
    outer_pos = [p for p in shape.spatial if p not in (shape.x, shape.y)]
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
    return _task_loop(sch, outer, work), xo, red, tile


def _task_loop(sch, outer, work):
    """The outer loops fused into one task loop (parallel when there is enough work), or None."""
    par = sch.fuse(*outer) if len(outer) > 1 else (outer[0] if outer else None)
    if par is not None and work >= MIN_PARALLEL_WORK:
        sch.parallel(par)
    return par


def _pads_per_task(sch, local_pads, par, phased, info) -> None:
    """Pad each task's input inside the task, in cache, not as a pass over a padded copy."""
    for p in local_pads:
        if par is not None:
            sch.compute_at(p.rv, par)
        if phased:
            at = sch.get_loops(p.rv)[1 if par is not None else 0]
            _unroll_phases(sch, [sch.decompose_padding(p.rv, at), p.rv])
        else:
            _vectorize_row(sch, p.rv, info)


def _tile_writer_at(sch, out_rv, loop) -> None:
    """Store each tile right after it is computed, while it is still in cache, as vectors."""
    sch.reverse_compute_at(out_rv, loop, preserve_unit_loops=True)
    out_loops = sch.get_loops(out_rv)
    if const_int(sch.get(out_loops[-1]).extent) not in (None, 1):
        sch.vectorize(out_loops[-1])


def _unroll_width_tile(sch, conv_rv, shape, ext, red, tile, vector: bool, window_too=True):
    """Unroll the window (3x3, 5x5, ...) and the tile so LLVM sees which loaded rows repeat."""
    window = [lp for lp, p in zip(red, shape.reductions) if ext[p] > 1]
    for lp in tile[:-1]:
        sch.unroll(lp)
    if window_too and _reduction_size(shape, ext) <= 64:
        for lp in window[-2:]:
            sch.unroll(lp)
    if vector:
        sch.vectorize(tile[-1])
    init = sch.decompose_reduction(conv_rv, red[0])
    if vector:
        sch.vectorize(sch.get_loops(init)[-1])


def _vectorize_row(sch: Schedule, rv, info: CpuInfo) -> None:
    """Vectorize the innermost loop of a block placed under another loop (a padded row)."""
    loops = sch.get_loops(rv)
    if not loops:
        return
    extent = const_int(sch.get(loops[-1]).extent)
    if extent is None or extent == 1:
        return
    if extent <= 8 * info.lanes:
        sch.vectorize(loops[-1])
        return
    width = vector_width(extent, info.lanes)
    if width > 1:
        _, vec = sch.split(loops[-1], [None, width])
        sch.vectorize(vec)
