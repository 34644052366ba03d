"""The conv rule's choice between channel and width vectors, with exact numbers either way.

Channels in SIMD lanes (the weight packed channel-last: a prepacked constant) from 4 SIMD
widths of reduction on, unless the output channels fill only part of a register; output
width in lanes (no packing) for short reductions and for half-register channel counts.
Shapes are derived from the host's SIMD width so the same choices are tested on AVX2 and
AVX-512 machines.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import make_target
from graphopt.targets.cpu import schedules as rules
from graphopt.testing import apply_checked

HOST = make_target("x86", {"layout": "NCHW"})  # the NCHW rules: ARM, `layout=NCHW`
LANES = rules.cpu_info(HOST.tvm_target()).lanes


def _stage(mod, stage):
    with HOST.tvm_target():
        names = ",".join(HOST.stages()[stage])
        return run_passes(mod, instantiate(parse_pipeline(names)), stage=stage)


def _run(mod, x):
    ex = tvm.compile(_stage(mod, "lower"), target=HOST.tvm_target(), relax_pipeline=None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def conv_module(n, c, h, w, o, k=1, stride=1, pad=0, groups=1):
    """conv2d + bias + relu6, as MobileNet blocks end."""
    weight = relax.const(_rand(o, c // groups, k, k, seed=1))
    bias = relax.const(_rand(1, o, 1, 1, seed=2))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, c, h, w), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, weight, strides=stride, padding=pad, groups=groups))
            y = bb.emit(relax.op.clip(relax.op.add(y, bias), 0.0, 6.0))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def schedule_and_compare(mod, x):
    """Scheduled vs unscheduled build on x; returns schedule-cpu's stats."""
    legal = _stage(mod, "legalize")
    with HOST.tvm_target():
        result = apply_checked(make_pass("schedule-cpu"), legal)
    assert result.stats["scheduled_conv"] >= 1 and result.stats["failed"] == 0, result.stats
    got = _run(result.module, x)  # scheduled first: the pooled allocator must not hide a gap
    want = _run(legal, x)
    err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)
    assert err <= 1e-6, f"relative error {err:.3g}"
    return result.stats


# (N, C, H, W, O, channel vectors expected): pointwise convs on 14-column maps (14 of 16
# lanes, 7 of 8: wide enough for width tiles), output channels in whole registers or not;
# maps of LANES // 2 - 1 columns (7 of 16 lanes, 3 of 8) fill under 3/4 of a register.
CHOICES = [
    (1, 4 * LANES, 14, 14, 2 * LANES, True),  # long enough reduction: channels
    (2, 4 * LANES + 3, 13, 14, 2 * LANES, True),  # batch 2, odd channel count and rows
    (1, 2 * LANES, 14, 14, 2 * LANES, False),  # short reduction: width
    (1, 8 * LANES, 14, 14, 3 * LANES // 2, False),  # 1.5 registers of channels: width
    (1, 8 * LANES + 1, 7, 14, LANES // 2 * 5, False),  # 2.5 registers (40 of 16 lanes)
    (1, 2 * LANES, 7, LANES // 2 - 1, 2 * LANES, True),  # too narrow for width: channels
]


@pytest.mark.parametrize("n,c,h,w,o,channels", CHOICES)
def test_channel_or_width_vectors(n, c, h, w, o, channels):
    stats = schedule_and_compare(conv_module(n, c, h, w, o), _rand(n, c, h, w))
    assert (stats["prepacked_weights"] > 0) == channels, stats


@pytest.mark.parametrize(
    "n,c,h,w,o,k,s,p,g",
    [
        (1, 4 * LANES, 9, 11, 2 * LANES, 3, 1, 1, 1),  # 3x3 over a long reduction
        (1, 2 * LANES, 15, 14, 3 * LANES // 2, 3, 2, 1, 1),  # stride 2, half-register channels
        (1, LANES * 5, 6, 6, 5, 1, 1, 0, 1),  # 5 output channels (no vector of channels)
        (2, 3 * LANES, 14, 14, 3 * LANES, 3, 1, 1, 3 * LANES),  # depthwise, batch 2
    ],
)
def test_other_convs_keep_their_numbers(n, c, h, w, o, k, s, p, g):
    schedule_and_compare(conv_module(n, c, h, w, o, k, s, p, g), _rand(n, c, h, w))


def test_one_channel_block_shares_its_pixels_among_threads():
    """A flattened 1x1 conv with one block of output channels (MobileNetV2's 192 -> 32 over
    one 784-pixel row) was a single parallel task: the pixel tiles must be tasks too."""
    mod = conv_module(1, 12 * LANES, 1, 784, 2 * LANES)
    legal = _stage(mod, "legalize")
    with HOST.tvm_target():
        result = apply_checked(make_pass("schedule-cpu"), legal)
    text = "\n".join(
        f.script() for f in result.module.functions.values() if "T.parallel" in f.script()
    )
    extents = [
        int(line.split("T.parallel(T.int64(")[1].split(")")[0])
        for line in text.splitlines()
        if "T.parallel(T.int64(" in line
    ]
    assert extents and max(extents) >= 4 * rules.cpu_info(HOST.tvm_target()).cores, extents
    schedule_and_compare(mod, _rand(1, 12 * LANES, 1, 784))


@pytest.mark.parametrize(
    "info,f,x,tile",
    [
        # AVX-512 (32 registers): two registers of channels x 7 pixels = 14 accumulators.
        (rules.CpuInfo(lanes=16, registers=32, cores=1), 32, 14, (16, 2, 7)),
        (rules.CpuInfo(lanes=16, registers=32, cores=1), 32, 7, (16, 2, 7)),
        # AVX2 (16 registers): 2 x 7 spills and 2 x 2 reuses each weight load twice, so one
        # register of channels x 7 pixels (14x14 and 7x7 maps); 2 x 4 where 4 divides the width.
        (rules.CpuInfo(lanes=8, registers=16, cores=1), 16, 14, (8, 1, 7)),
        (rules.CpuInfo(lanes=8, registers=16, cores=1), 384, 7, (8, 1, 7)),
        (rules.CpuInfo(lanes=8, registers=16, cores=1), 64, 28, (8, 2, 4)),
        (rules.CpuInfo(lanes=8, registers=16, cores=1), 16, 13, None),  # 13 pixels fit no tile
    ],
)
def test_channel_tile_fits_the_register_file(info, f, x, tile):
    from graphopt.targets.cpu.schedules import conv

    shape = conv.WindowShape(
        x=1,
        channel=0,
        spatial=[0, 1],
        reductions=[2],
        weight_index=1,
        weight_channel_dim=0,
        data_uses_channel=False,
    )
    got = conv._channel_tile(shape, [f, x, 64], info)
    assert (got and (got.lanes, got.vectors, got.width)) == tile, got
