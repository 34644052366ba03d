"""flatten-pointwise: 1x1 convs over partial-vector-width maps computed over one H*W row."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from graphopt import _tvm
from graphopt.target_infra import make_target
from graphopt.targets.cpu.passes.flatten_pointwise import FlattenPointwise
from graphopt.targets.cpu.schedules import cpu_info
from graphopt.testing import check_no_change, check_numerics, run_through_target

AVX512 = make_target("x86", {"mcpu": "skylake-avx512"}).tvm_target()
AVX2 = make_target("x86", {"mcpu": "haswell"}).tvm_target()


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def conv_module(n, c, h, w, o, stride=1, pad=0, k=1, groups=1, residual=False, arrays=None):
    """conv2d + bias + relu6 (+ a residual input), as MobileNet blocks end."""
    weight, bias = _rand(o, c // groups, k, k, seed=1), _rand(1, o, 1, 1, seed=2)
    if arrays is not None:
        arrays.extend([weight, bias])
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, c, h, w), "float32"))
    params = [x]
    if residual:
        params.append(relax.Var("r", relax.TensorType((n, o, h, w), "float32")))
    with bb.function("main", params):
        with bb.dataflow():
            y = relax.op.nn.conv2d(
                x, relax.const(weight), strides=stride, padding=pad, groups=groups
            )
            y = bb.emit(relax.op.clip(relax.op.add(bb.emit(y), relax.const(bias)), 0.0, 6.0))
            if residual:
                y = bb.emit(relax.op.add(y, params[1]))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _flatten(mod, target=AVX512):
    with target:
        return FlattenPointwise()(mod)


@pytest.mark.parametrize(
    "shape", [(1, 5, 8, 14, 7), (2, 16, 4, 28, 24), (3, 7, 16, 9, 2)], ids=["odd", "b2", "b3"]
)
def test_flattens_and_keeps_numbers(shape):
    with AVX512:
        result = check_numerics(FlattenPointwise(), conv_module(*shape), rtol=1e-6)
    assert result.stats["convs_flattened"] == 1
    assert _tvm.op_counts(result.module)["relax.reshape"] == 2


def test_scheduled_build_is_exact_with_a_fused_residual():
    """Through the host's x86 stages (schedule-cpu included) against numpy."""
    lanes = cpu_info(make_target("x86").tvm_target()).lanes
    n, c, h, w, o = 2, 3 * lanes, 4, lanes + lanes // 2, 24
    arrays = []
    mod = conv_module(n, c, h, w, o, residual=True, arrays=arrays)
    weight, bias = arrays
    with make_target("x86").tvm_target():
        flat = FlattenPointwise()(mod)
    assert flat.stats["convs_flattened"] == 1
    x, r = _rand(n, c, h, w, seed=3), _rand(n, o, h, w, seed=4)
    want = np.clip(np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x) + bias, 0, 6) + r
    got = run_through_target(flat.module, x, r)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got, run_through_target(mod, x, r))


def test_width_in_whole_vectors_depends_on_the_target():
    mod = conv_module(1, 8, 2, 24, 8)  # 24 columns: 3 AVX2 vectors, 1.5 AVX-512 vectors
    assert _flatten(mod, AVX512).stats["convs_flattened"] == 1
    with AVX2:
        check_no_change(FlattenPointwise(), mod)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"h": 4, "w": 32},  # whole vectors already
        {"h": 7, "w": 7},  # 49 pixels: no whole vectors either way
        {"stride": 2},
        {"pad": 1},
        {"k": 3, "pad": 1},
        {"groups": 8, "o": 8},
    ],
    ids=["aligned", "7x7", "stride2", "padded", "3x3", "depthwise"],
)
def test_other_convs_stay(kwargs):
    args = {"n": 1, "c": 8, "h": 8, "w": 14, "o": 16, **kwargs}
    with AVX512:
        check_no_change(FlattenPointwise(), conv_module(**args))


def test_fused_groups_stay():
    """Inside a `fuse` group a reshape would be a copy within the kernel."""
    from graphopt.pass_infra import make_pass

    fused = make_pass("fuse")(conv_module(1, 8, 8, 14, 16)).module
    assert any(op.startswith("call:fused") for op in _tvm.op_counts(fused))  # the conv's group
    with AVX512:
        check_no_change(FlattenPointwise(), fused)
