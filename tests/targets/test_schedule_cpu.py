"""schedule-cpu: every rule gives the numbers of the unscheduled build, odd shapes included.

Each case builds a Relax module with one operator (plus its usual epilogue), runs the x86
legalize stage, then builds it twice, with and without the pass, and compares the outputs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import tirx as T

from graphopt import _tvm
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import make_target
from graphopt.targets.cpu import schedules as rules
from graphopt.testing import apply_checked

HOST = make_target("x86")
# The x86 legalize stage converts convs to NHWC; the NCHW rules (ARM, `layout=NCHW`) too.
NCHW_HOST = make_target("x86", {"layout": "NCHW"})


def _stage(mod: tvm.IRModule, stage: str, target=HOST) -> tvm.IRModule:
    names = ",".join(target.stages()[stage])
    with target.tvm_target():
        return run_passes(mod, instantiate(parse_pipeline(names)), stage=stage)


def _run(mod: tvm.IRModule, arrays, target=HOST) -> np.ndarray:
    ex = tvm.compile(
        _stage(mod, "lower", target),
        target=target.tvm_target(),
        relax_pipeline=None,
        tir_pipeline=target.tir_pipeline(),
    )
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _schedule(mod: tvm.IRModule, target=HOST):
    with target.tvm_target():
        return apply_checked(make_pass("schedule-cpu"), mod)


def check(mod: tvm.IRModule, arrays, rule: str, target=HOST, rtol: float = 1e-6):
    """Scheduled and unscheduled builds agree; `rule` scheduled the main kernel."""
    legal = _stage(mod, "legalize", target)
    result = _schedule(legal, target)
    assert result.stats[f"scheduled_{rule}"] >= 1, result.stats
    assert result.stats["failed"] == 0, result.stats
    # Scheduled build first: the VM's pooled allocator could hand it the reference's freed
    # output, hiding outputs a schedule forgot to write.
    got = _run(result.module, arrays, target)
    want = _run(legal, arrays, target)
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max()) / scale
    assert err <= rtol, f"relative error {err:.3g}"
    return result


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _func(inputs, build):
    """A Relax module main(*inputs) = build(bb, *vars), inputs = [(shape, ...)]."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _const(*shape, seed=1):
    return relax.const(_rand(*shape, seed=seed))


# ------------------------------------------------------------------------------------- matmul


def _gelu(bb, y):
    return relax.op.nn.gelu(y)


MATMULS = [
    # (M, N, K, epilogue)
    (64, 48, 32, ""),
    (7, 13, 29, ""),  # primes: no SIMD-sized tile divides
    (1, 1, 1, "bias"),
    (1, 40, 33, "bias"),  # GEMV-like row
    (1, 1000, 1280, "bias"),  # a classifier: the weight packed in panels, N padded to them
    (97, 96, 64, "bias_gelu"),  # prime M: padded rows, fused epilogue
    (33, 100, 40, "bias_relu"),  # N padded to whole registers
    (128, 64, 48, "residual"),  # epilogue with a second full-size input
]


@pytest.mark.parametrize("m,n,k,epilogue", MATMULS)
def test_matmul(m, n, k, epilogue):
    w, b = _const(k, n), _const(n, seed=2)
    inputs = [(m, k)] + ([(m, n)] if epilogue == "residual" else [])

    def build(bb, x, *rest):
        y = bb.emit(relax.op.matmul(x, w))
        if "bias" in epilogue:
            y = bb.emit(relax.op.add(y, b))
        if "gelu" in epilogue:
            y = bb.emit(relax.op.nn.gelu(y))
        if "relu" in epilogue:
            y = bb.emit(relax.op.nn.relu(y))
        if epilogue == "residual":
            y = bb.emit(relax.op.add(y, rest[0]))
        return y

    arrays = [_rand(*s, seed=i) for i, s in enumerate(inputs)]
    check(_func(inputs, build), arrays, "matmul")


def test_batch_matmul_both_inputs():
    def build(bb, a, c):
        return relax.op.matmul(a, c)

    inputs = [(2, 3, 17, 19), (2, 3, 19, 35)]
    check(_func(inputs, build), [_rand(*s, seed=i) for i, s in enumerate(inputs)], "matmul")


def test_matmul_3d_by_2d_weight():
    w = _const(32, 48)

    def build(bb, x):
        return relax.op.matmul(x, w)

    check(_func([(2, 13, 32)], build), [_rand(2, 13, 32)], "matmul")


def test_matmul_transposed_weight_input():
    """B[j, k] (x @ W^T with W an input): packing makes any layout of B contiguous."""

    def build(bb, x, w):
        return relax.op.matmul(x, relax.op.permute_dims(w))

    inputs = [(40, 24), (36, 24)]
    check(_func(inputs, build), [_rand(*s, seed=i) for i, s in enumerate(inputs)], "matmul")


# --------------------------------------------------------------------------------------- conv

CONVS = [
    # (N, C, H, W, O, kernel, stride, padding, groups)
    (1, 16, 12, 12, 32, 3, 1, 1, 1),  # regular 3x3: channels in SIMD lanes
    (2, 16, 13, 11, 32, 3, 2, 1, 1),  # stride 2, odd sizes, batch 2
    (1, 32, 7, 7, 48, 1, 1, 0, 1),  # pointwise 1x1 on a 7x7 map
    (1, 48, 10, 10, 24, 1, 1, 0, 1),  # 24 output channels: half-register channel vectors
    (1, 8, 9, 9, 40, 3, 1, 1, 1),  # 40 output channels, 9 columns
    (1, 3, 17, 15, 8, 5, 1, (2, 1, 1, 2), 1),  # 5x5, asymmetric padding, few channels
    (1, 32, 14, 14, 32, 3, 1, 1, 32),  # depthwise
    (1, 24, 15, 15, 24, 3, 2, 1, 24),  # depthwise stride 2 (odd map)
    (1, 8, 10, 10, 16, 3, 1, 1, 8),  # depthwise with channel multiplier 2
    (1, 12, 9, 9, 18, 3, 1, 1, 3),  # grouped conv
    (1, 8, 3, 3, 4, 3, 1, 0, 1),  # 1x1 output
    # Short reductions over whole vectors of columns: output width in SIMD lanes.
    (1, 16, 5, 32, 24, 1, 1, 0, 1),  # pointwise over 16 channels
    (1, 3, 32, 32, 8, 3, 2, 1, 1),  # stride-2 stem: phase-split padded input
    (2, 3, 30, 31, 8, 3, 2, (1, 1, 0, 1), 1),  # the same, batch 2, odd, asymmetric padding
    # Stride-2 depthwise over wide maps: phase-split per-channel pads.
    (1, 8, 34, 34, 8, 3, 2, 1, 8),
    (1, 4, 20, 40, 4, 5, 2, 2, 4),  # 5x5 window
    (1, 4, 20, 39, 4, 3, 2, 1, 4),  # padded width 41 is odd: one more zero column
    # TF-style asymmetric pads (fold-pad): odd padded widths, whole-input phase split.
    (1, 3, 32, 32, 8, 3, 2, (0, 0, 1, 1), 1),
    (1, 8, 32, 32, 8, 3, 2, (0, 0, 1, 1), 8),
]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("n,c,h,w,o,k,s,p,g", CONVS)
def test_conv2d(n, c, h, w, o, k, s, p, g, layout):
    weight, bias = _const(o, c // g, k, k), _const(1, o, 1, 1, seed=2)

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, weight, strides=s, padding=p, groups=g))
        y = bb.emit(relax.op.add(y, bias))
        return relax.op.clip(y, 0.0, 6.0)

    target = HOST if layout == "NHWC" else NCHW_HOST
    check(_func([(n, c, h, w)], build), [_rand(n, c, h, w)], "conv", target)


NHWC_CONVS = [
    # (N, H, W, C, O, kernel, stride, padding, groups): what the `layout` pass produces
    (1, 12, 12, 16, 32, 3, 1, 1, 1),
    (2, 13, 11, 16, 24, 3, 2, 1, 1),  # stride 2, odd sizes, batch 2, half-register channels
    (1, 7, 7, 32, 48, 1, 1, 0, 1),  # pointwise
    (1, 14, 14, 32, 32, 3, 1, 1, 32),  # depthwise: channels in lanes, data loaded as vectors
    (1, 15, 15, 48, 48, 3, 2, 1, 48),  # depthwise stride 2, odd map
    (1, 9, 9, 3, 8, 3, 2, 1, 1),  # 3 input channels
    # Depthwise tasks: row blocks (4 rows, 2 when strided) padding their own input rows.
    (1, 16, 16, 64, 64, 3, 1, 1, 64),
    (2, 17, 17, 40, 40, 3, 2, 1, 40),  # odd map, batch 2, half-register channels
    (1, 12, 12, 32, 32, 5, 1, 2, 32),  # 5x5 window
    (1, 12, 13, 16, 16, 3, 2, (0, 0, 1, 1), 16),  # TF-style asymmetric pad
]


@pytest.mark.parametrize("n,h,w,c,o,k,s,p,g", NHWC_CONVS)
def test_conv2d_nhwc(n, h, w, c, o, k, s, p, g):
    weight, bias = _const(o, k, k, c // g), _const(1, 1, 1, o, seed=2)

    def build(bb, x):
        y = bb.emit(
            relax.op.nn.conv2d(
                x, weight, strides=s, padding=p, groups=g, data_layout="NHWC", kernel_layout="OHWI"
            )
        )
        y = bb.emit(relax.op.add(y, bias))
        return relax.op.clip(y, 0.0, 6.0)

    check(_func([(n, h, w, c)], build), [_rand(n, h, w, c)], "conv")


@pytest.mark.parametrize("c,o,g", [(3, 8, 1), (8, 8, 8)])
def test_stride_2_windows_read_a_phase_split_input(c, o, g):
    """The padded input of a wide stride-2 conv is stored as [.., y, x % 2, x // 2]."""
    weight = _const(o, c // g, 3, 3)

    def build(bb, x):
        return relax.op.nn.conv2d(x, weight, strides=2, padding=1, groups=g)

    result = check(_func([(1, c, 32, 32)], build), [_rand(1, c, 32, 32)], "conv", NCHW_HOST)
    text = "\n".join(f.script() for f in result.module.functions.values() if _is_prim(f))
    assert "T.int64(34), T.int64(2), T.int64(17)" in text


def _is_prim(func) -> bool:
    return isinstance(func, tvm.tirx.PrimFunc)


def test_conv2d_without_epilogue_and_residual():
    weight = _const(32, 16, 3, 3)

    def build(bb, x, r):
        y = bb.emit(relax.op.nn.conv2d(x, weight, padding=1))
        return relax.op.add(y, r)

    inputs = [(1, 16, 8, 8), (1, 32, 8, 8)]
    check(_func(inputs, build), [_rand(*s, seed=i) for i, s in enumerate(inputs)], "conv")
    check(
        _func([(1, 16, 8, 8)], lambda bb, x: relax.op.nn.conv2d(x, weight, padding=1)),
        [_rand(1, 16, 8, 8)],
        "conv",
    )


def test_epilogues_that_are_not_elementwise_run_after_the_tiles():
    """A fused pad (EfficientNet's TF-style padding) writes outside the conv's tiles and a
    fused transpose reads across them: both run as their own loop, not per tile."""
    weight = _const(32, 16, 1, 1)

    def conv_pad(bb, x):
        y = bb.emit(relax.op.clip(relax.op.nn.conv2d(x, weight), 0.0, 6.0))
        return relax.op.nn.pad(y, [0, 0, 0, 0, 0, 1, 0, 1], pad_value=1.5)

    result = check(_func([(1, 16, 12, 12)], conv_pad), [_rand(1, 16, 12, 12)], "conv")
    assert "pad" in " ".join(_callees(result.module))

    w = _const(24, 40)

    def matmul_transpose(bb, x):
        return relax.op.permute_dims(relax.op.matmul(x, w), [1, 0])

    check(_func([(33, 24)], matmul_transpose), [_rand(33, 24)], "matmul")


# ---------------------------------------------------------------------- pooling and reductions


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool(stride):
    def build(bb, x):
        return relax.op.nn.max_pool2d(x, pool_size=3, strides=stride, padding=1)

    check(_func([(1, 8, 13, 14)], build), [_rand(1, 8, 13, 14)], "window")


def test_softmax_layer_norm_mean():
    gamma, beta = _const(40), _const(40, seed=2)

    def build(bb, x):
        y = bb.emit(relax.op.nn.softmax(x, axis=-1))
        y = bb.emit(relax.op.nn.layer_norm(y, gamma, beta, axes=[-1]))
        return relax.op.mean(y, axis=[1], keepdims=True)

    result = check(_func([(3, 7, 40)], build), [_rand(3, 7, 40)], "reduction", rtol=1e-5)
    assert result.stats["untouched"] == 0, result.stats


def test_global_average_pool():
    def build(bb, x):
        return relax.op.mean(x, axis=[2, 3], keepdims=True)

    check(_func([(2, 24, 7, 7)], build), [_rand(2, 24, 7, 7)], "reduction", rtol=1e-5)


# --------------------------------------------------------------------------------- elementwise


def test_elementwise_broadcast_and_transpose():
    bias = _const(1, 24, 1, 1)

    def build(bb, x):
        y = bb.emit(relax.op.nn.relu(relax.op.add(x, bias)))
        return relax.op.permute_dims(y, [0, 2, 3, 1])

    result = check(_func([(2, 24, 9, 13)], build), [_rand(2, 24, 9, 13)], "elementwise")
    assert result.stats["untouched"] == 0


def test_transpose_to_three_channels_last_keeps_its_inner_loops():
    """Nothing to vectorize (3 channels last): parallel over the leading loops only, no
    fused loop that divides its index per element (an RGB image to NHWC)."""
    result = check(
        _func([(1, 3, 160, 160)], lambda bb, x: relax.op.permute_dims(x, [0, 2, 3, 1])),
        [_rand(1, 3, 160, 160)],
        "elementwise",
    )
    (kernel,) = [f.script() for f in result.module.functions.values() if _is_prim(f)]
    assert "T.parallel(T.int64(160))" in kernel and "T.unroll(T.int64(3))" in kernel


@pytest.mark.parametrize("op", [relax.op.cosh, relax.op.sinh])
def test_elementwise_without_vector_lowering_stays_scalar(op):
    """LLVM has no vector cosh/sinh in TVM 0.27: vectorizing them fails at build time."""
    result = check(_func([(3, 4, 16)], lambda bb, x: op(x)), [_rand(3, 4, 16)], "elementwise")
    assert result.stats["untouched"] == 0


# ------------------------------------------------------------------------ targets, fallbacks


def _loop_extents(func) -> list[int]:
    """Constant loop extents, from the script (0.27's Python API has no TIR stmt visitor)."""
    loops = [ln for ln in func.script().splitlines() if ln.lstrip().startswith("for ")]
    return [int(e) for ln in loops for e in re.findall(r"T\.int64\((\d+)\)", ln)]


@pytest.mark.parametrize(
    "batch,m,n,k,epilogue,mcpu",
    [
        ((), 50, 64, 4099, "bias_relu", ""),  # prime K: the last K step is partial; mr = 5
        ((2,), 40, 40, 4608, "", ""),  # K = 9 x 512; N padded to whole registers; batch loop
        ((), 36, 24, 4101, "bias_relu", "znver3"),  # AVX2: 12 x 8 tiles
    ],
)
def test_matmul_blocks_k_when_a_panel_of_b_outgrows_l2(batch, m, n, k, epilogue, mcpu):
    """K x 64 columns of B over 1 MiB: K is swept in steps of at most 512 per row block."""
    if mcpu == "znver3" and "avx2" not in _tvm.host_cpu_features():
        pytest.skip("host has no AVX2")
    target = make_target("x86", {"mcpu": mcpu}) if mcpu else HOST
    w, b = _const(*batch, k, n), _const(n, seed=2)

    def build(bb, x):
        y = bb.emit(relax.op.matmul(x, w))
        if epilogue:
            y = bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, b))))
        return y

    x = _rand(*batch, m, k) / np.float32(np.sqrt(k))
    result = check(_func([(*batch, m, k)], build), [x], "matmul", target, rtol=1e-5)
    kernels = [f for f in result.module.functions.values() if _is_prim(f)]
    extents = [e for f in kernels for e in _loop_extents(f)]
    assert 512 in extents and -(-k // 512) in extents, extents
    # The epilogue stays fused: one kernel (B's packing is folded at compile time).
    assert len(kernels) == 1


def _innermost_fma_loop(asm: str) -> list[str]:
    """Instructions of the innermost loop (a label jumped back to) with the most FMAs."""
    lines = [ln.strip() for ln in asm.splitlines()]
    labels = {ln[:-1]: i for i, ln in enumerate(lines) if ln.startswith(".LBB") and ln[-1] == ":"}
    best: list[str] = []
    for i, ln in enumerate(lines):
        parts = ln.split()
        if len(parts) != 2 or not parts[0].startswith("j") or labels.get(parts[1], i) >= i:
            continue
        body = lines[labels[parts[1]] + 1 : i]
        if any(b.startswith(".LBB") for b in body):
            continue
        if sum("vfmadd" in b for b in body) > sum("vfmadd" in b for b in best):
            best = body
    return best


@pytest.mark.parametrize(
    "mcpu,reg,accumulators",
    [("znver4", "zmm", 16), ("znver3", "ymm", 12)],  # AVX-512: 8 x 32 tile; AVX2: 6 x 16
)
def test_matmul_micro_kernel_keeps_its_tile_in_registers(mcpu, reg, accumulators):
    """The inner loop is broadcast + FMA on mr x nr/lanes accumulator registers, no stores
    (compiled only: any x86 host can check both ISAs)."""
    target = make_target("x86", {"mcpu": mcpu})
    mod = _func([(96, 128)], lambda bb, x: relax.op.matmul(x, _const(128, 64)))
    result = _schedule(_stage(mod, "legalize", target), target)
    assert result.stats["scheduled_matmul"] == 1
    (func,) = [f for f in result.module.functions.values() if _is_prim(f)]
    main = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.compile(main, target=target.tvm_target())
    loop = _innermost_fma_loop(lib.mod.inspect_source("asm"))
    fmas = [ln for ln in loop if ln.startswith("vfmadd")]
    registers = {ln.split(",")[-1].strip() for ln in fmas}
    assert len(registers) == accumulators and all(r.startswith(f"%{reg}") for r in registers)
    assert len(fmas) % accumulators == 0
    # One broadcast of A per row per k: half as many as FMAs (two registers of columns),
    # unless LLVM folds them into the FMAs.
    broadcasts = sum(ln.startswith("vbroadcastss") for ln in loop)
    assert 2 * broadcasts == len(fmas) or any("{1to" in ln for ln in fmas)
    stores = [ln for ln in loop if ln.startswith("vmov") and ln.rstrip().endswith(")")]
    assert not stores, stores


def test_conv_register_tile_is_not_a_workspace_allocation():
    """A 1 KiB accumulator tile (16 zmm) is a stack tile held in registers; TVM's default
    lowering allocates it from the workspace pool for every output tile (compile only)."""
    target = make_target("x86", {"mcpu": "znver4"})
    mod = _func([(1, 16, 28, 28)], lambda bb, x: relax.op.nn.conv2d(x, _const(96, 16, 1, 1)))
    result = _schedule(_stage(mod, "legalize", target), target)
    assert result.stats["scheduled_conv"] == 1
    (func,) = [f for g, f in result.module.functions.items() if "conv2d" in g.name_hint]
    main = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})

    def build(pipeline):
        lib = tvm.compile(main, target=target.tvm_target(), tir_pipeline=pipeline).mod
        loop = _innermost_fma_loop(lib.inspect_source("asm"))
        stores = [ln for ln in loop if ln.startswith("vmov") and ln.rstrip().endswith(")")]
        return lib.inspect_source("ll").count("TVMBackendAllocWorkspace"), stores

    assert build("default")[0] > 0  # what the target's pipeline avoids
    workspace, stores = build(target.tir_pipeline())
    assert workspace == 0 and not stores, stores


def _cases_for_isa():
    mm = _func([(33, 40)], lambda bb, x: relax.op.matmul(x, _const(40, 56)))
    conv = _func(
        [(1, 16, 9, 9)], lambda bb, x: relax.op.nn.conv2d(x, _const(16, 16, 3, 3), padding=1)
    )
    dw = _func(
        [(1, 16, 9, 9)],
        lambda bb, x: relax.op.nn.conv2d(x, _const(16, 1, 3, 3), padding=1, groups=16),
    )
    return [
        (mm, [_rand(33, 40)], "matmul"),
        (conv, [_rand(1, 16, 9, 9)], "conv"),
        (dw, [_rand(1, 16, 9, 9)], "conv"),
    ]


@pytest.mark.parametrize("mcpu", ["x86-64", "haswell", "host"])
def test_other_simd_widths(mcpu):
    """SSE (4 lanes), AVX2 (8 lanes, 16 registers) and the host; all run on this machine."""
    if mcpu == "haswell" and "avx2" not in _tvm.host_cpu_features():
        pytest.skip("host has no AVX2")
    target = HOST if mcpu == "host" else make_target("x86", {"mcpu": mcpu})
    info = rules.cpu_info(target.tvm_target())
    expected = {"x86-64": 4, "haswell": 8}.get(mcpu)
    if expected is not None:
        assert info.lanes == expected
    for mod, arrays, rule in _cases_for_isa():
        check(mod, arrays, rule, target)


def test_cpu_info_from_features_not_vector_width():
    """llvm_get_vector_width says 512 for haswell in TVM 0.27; the rules read the features."""
    assert rules.cpu_info(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})).lanes == 8
    assert rules.cpu_info(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})).lanes == 16
    assert rules.cpu_info(tvm.target.Target("cuda")) is None


@I.ir_module
class Unhandled:
    """Two blocks under one loop (not the legalized one-block-per-nest form): no rule fits."""

    @T.prim_func(s_tir=True)
    def two_blocks(a: T.Buffer((8, 8), "float32"), b: T.Buffer((8, 8), "float32")):
        c = T.sblock_alloc_buffer((8, 8))
        for i in range(8):
            for j in range(8):
                with T.sblock("c"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    c[vi, vj] = a[vi, vj] * T.float32(2.0)
            for j in range(8):
                with T.sblock("b"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    b[vi, vj] = c[vi, vj] + T.float32(1.0)


def test_unhandled_function_is_left_alone_and_counted():
    result = make_pass("schedule-cpu")(Unhandled)
    assert not result.modified
    assert result.stats["untouched"] == 1
    assert sum(v for k, v in result.stats.items() if k.startswith("scheduled_")) == 0
    tvm.ir.assert_structural_equal(result.module, Unhandled)


def test_symbolic_shapes_do_not_break_the_pass():
    """Kernels with a symbolic batch are left as TVM makes them (or scheduled by dlight)."""
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.matmul(x, _const(16, 32))))
            y = bb.emit_output(relax.op.nn.softmax(y))
        bb.emit_func_output(y)
    legal = _stage(bb.get(), "legalize")
    result = _schedule(legal)
    assert result.stats["failed"] == 0, result.stats
    arrays = [_rand(5, 16)]
    got = _run(result.module, arrays)
    np.testing.assert_allclose(got, _run(legal, arrays), rtol=1e-5, atol=1e-7)


def test_rule_errors_keep_the_original_function(monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    from graphopt.targets.cpu.schedules import rules as registry

    for name in ("schedule_matmul", "schedule_window", "schedule_reduction"):
        monkeypatch.setattr(registry, name, broken)
    legal = _stage(_func([(8, 16)], lambda bb, x: relax.op.matmul(x, _const(16, 8))), "legalize")
    with HOST.tvm_target():
        p = make_pass("schedule-cpu")
        result = p(legal)
    assert not result.modified
    assert result.stats["untouched"] == 1 and result.stats["failed"] == 1
    assert "boom" in next(iter(p.errors.values()))
    tvm.ir.assert_structural_equal(result.module, legal)


def test_already_scheduled_functions_are_skipped():
    legal = _stage(_func([(8, 16)], lambda bb, x: relax.op.matmul(x, _const(16, 8))), "legalize")
    once = _schedule(legal).module
    again = _schedule(once)
    assert not again.modified
    assert again.stats["already_scheduled"] == 1


def test_rules_option_restricts():
    legal = _stage(_func([(8, 16)], lambda bb, x: relax.op.matmul(x, _const(16, 8))), "legalize")
    with HOST.tvm_target():
        result = make_pass("schedule-cpu", {"rules": "elementwise"})(legal)
    assert not result.modified and result.stats["untouched"] == 1


def _callees(mod: tvm.IRModule) -> list[str]:
    return [gv.name_hint for gv in mod.get_global_vars()]


def test_constant_weights_are_packed_at_compile_time():
    """The packing blocks move out of the kernels and fold into constants."""
    mod = _func([(40, 32)], lambda bb, x: relax.op.matmul(x, _const(32, 64)))
    result = check(mod, [_rand(40, 32)], "matmul")
    assert result.stats["prepacked_weights"] == 1
    assert not any(n.endswith("_weight_prepack") for n in _callees(result.module))

    conv = _func([(1, 16, 8, 8)], lambda bb, x: relax.op.nn.conv2d(x, _const(32, 16, 3, 3)))
    result = check(conv, [_rand(1, 16, 8, 8)], "conv")
    assert result.stats["prepacked_weights"] == 1


def test_prepack_off_packs_on_every_call():
    legal = _stage(_func([(40, 32)], lambda bb, x: relax.op.matmul(x, _const(32, 64))), "legalize")
    with HOST.tvm_target():
        result = apply_checked(make_pass("schedule-cpu", {"prepack": "false"}), legal)
    assert result.stats["prepacked_weights"] == 0
    assert any(n.endswith("_weight_prepack") for n in _callees(result.module))
    arrays = [_rand(40, 32)]
    np.testing.assert_allclose(_run(result.module, arrays), _run(legal, arrays), rtol=1e-6)


def test_divisors_are_exact_and_fast_for_huge_extents():
    """A model may declare any extent: listing divisors is O(sqrt n), never a loop up to n."""
    import time

    from graphopt.targets.cpu.schedules.common import divisors

    for n in range(1, 500):
        assert divisors(n) == [d for d in range(1, n + 1) if n % d == 0]
    start = time.perf_counter()
    assert divisors(2**40)[-3:] == [2**38, 2**39, 2**40]
    assert time.perf_counter() - start < 5
