"""layout: conv2d to NHWC, weight transposes folded into constants, transposes cancelled."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax, topi

from graphopt import _tvm
from graphopt.errors import TargetError
from graphopt.pass_infra import make_pass
from graphopt.target_infra import make_target
from graphopt.testing import apply_checked, run_through_target, single_input_module

HOST = make_target("x86")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


W1, B1 = _rand(16, 8, 3, 3, seed=1), _rand(1, 16, 1, 1, seed=2)
W2 = _rand(16, 1, 3, 3, seed=3)  # depthwise


def _before_net(bb, x, te_clip=False):
    """conv -> bias -> relu6 -> depthwise stride-2 conv: NCHW, as ONNX exports it."""
    y = bb.emit(relax.op.nn.conv2d(x, relax.const(W1), padding=1))
    y = bb.emit(relax.op.add(y, relax.const(B1)))
    if te_clip:  # what the ONNX importer emits for Clip: TE kernels with scalar bounds
        y = bb.emit_te(topi.maximum, y, relax.const(0.0, "float32"))
        y = bb.emit_te(topi.minimum, y, relax.const(6.0, "float32"))
    else:
        y = bb.emit(relax.op.maximum(y, relax.const(0.0, "float32")))
        y = bb.emit(relax.op.minimum(y, relax.const(6.0, "float32")))
    return relax.op.nn.conv2d(y, relax.const(W2), strides=2, padding=1, groups=16)


def _expected_net(bb, x):
    nhwc = {"data_layout": "NHWC", "kernel_layout": "OHWI", "out_layout": "NHWC"}
    y = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
    y = bb.emit(
        relax.op.nn.conv2d(y, relax.const(W1.transpose(0, 2, 3, 1).copy()), padding=1, **nhwc)
    )
    y = bb.emit(relax.op.add(y, relax.const(B1.transpose(0, 2, 3, 1).copy())))
    y = bb.emit(relax.op.maximum(y, relax.const(0.0, "float32")))
    y = bb.emit(relax.op.minimum(y, relax.const(6.0, "float32")))
    w2 = relax.const(W2.transpose(0, 2, 3, 1).copy())
    y = bb.emit(relax.op.nn.conv2d(y, w2, strides=2, padding=1, groups=16, **nhwc))
    return relax.op.permute_dims(y, [0, 3, 1, 2])


def _normalized(mod):
    mod = relax.transform.CanonicalizeBindings()(mod)
    return relax.transform.DeadCodeElimination()(mod)


def test_before_expected():
    before = single_input_module((1, 8, 10, 10), _before_net)
    result = apply_checked(make_pass("layout"), before)
    expected = single_input_module((1, 8, 10, 10), _expected_net)
    got = _normalized(result.module)
    assert _tvm.structural_equal(got, _normalized(expected)), _tvm.to_script(got)
    assert result.stats["convs_converted"] == 2
    assert result.stats["transposes_left"] == 2  # graph entry and exit only
    assert result.stats["transposes_removed"] == 2  # between the two convs
    assert result.stats["constants_folded"] == 3  # two weights and the bias


@pytest.mark.parametrize("shape", [(1, 8, 10, 10), (2, 8, 13, 9)])
def test_importer_clip_kernels_are_raised_and_numbers_unchanged(shape):
    before = single_input_module(shape, lambda bb, x: _before_net(bb, x, te_clip=True))
    result = apply_checked(make_pass("layout"), before)
    assert result.stats["elementwise_raised"] == 2
    assert result.stats["transposes_left"] == 2
    counts = _tvm.op_counts(result.module)
    assert counts.get("relax.call_tir", 0) == 0 and counts["relax.permute_dims"] == 2
    x = _rand(*shape, seed=7)
    want = run_through_target(before, x)
    got = run_through_target(result.module, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_does_not_fire_without_nchw_convs():
    w = relax.const(_rand(8, 4))
    no_conv = single_input_module((3, 8), lambda bb, x: relax.op.matmul(x, w))
    nhwc = single_input_module(
        (1, 6, 6, 8),
        lambda bb, x: relax.op.nn.conv2d(
            x, relax.const(_rand(4, 1, 1, 8)), data_layout="NHWC", kernel_layout="OHWI"
        ),
    )
    for mod in (no_conv, nhwc):
        result = apply_checked(make_pass("layout"), mod)
        assert not result.modified and result.stats["convs_converted"] == 0


def test_elementwise_kernels_that_are_not_scalar_ops_stay():
    """A call_tir reading a full second tensor is not raised (only tensor-with-0-d-scalar)."""

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(W1), padding=1))
        return bb.emit_te(topi.maximum, y, relax.const(_rand(1, 16, 10, 10, seed=4)))

    before = single_input_module((1, 8, 10, 10), build)
    result = apply_checked(make_pass("layout"), before)
    assert result.stats["elementwise_raised"] == 0
    assert result.stats["convs_converted"] == 1
    x = _rand(1, 8, 10, 10, seed=5)
    got, want = run_through_target(result.module, x), run_through_target(before, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_grouped_convs_keep_their_layout_depthwise_convs_convert():
    """Several channels per group: the channel-last rule has no vector form for it."""
    w_grouped = relax.const(_rand(16, 4, 3, 3, seed=4))  # 16 channels in 4 groups of 4

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, w_grouped, padding=1, groups=4))
        return relax.op.nn.conv2d(y, relax.const(W2), padding=1, groups=16)

    before = single_input_module((1, 16, 8, 8), build)
    result = apply_checked(make_pass("layout"), before)
    layouts = [
        str(c.attrs.data_layout)
        for c in _tvm.iter_relax_calls(result.module)
        if getattr(c.op, "name", "") == "relax.nn.conv2d"
    ]
    assert sorted(layouts) == ["NCHW", "NHWC"]
    assert result.stats["convs_converted"] == 1
    x = _rand(1, 16, 8, 8, seed=5)
    got, want = run_through_target(result.module, x), run_through_target(before, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_conv_groups_of_fuse_are_inlined_so_transposes_cancel():
    """ConvertLayout works per function: convs inside `fuse`'s groups would keep transposes
    at every group edge. The groups are inlined first (FuseOps fuses them again)."""
    before = single_input_module((1, 8, 10, 10), lambda bb, x: _before_net(bb, x, te_clip=True))
    fused = apply_checked(make_pass("fuse"), before).module
    assert any(
        isinstance(f, relax.Function) and f.attrs is not None and "Composite" in f.attrs
        for f in fused.functions.values()
    )
    result = apply_checked(make_pass("layout"), fused)
    assert result.stats["convs_converted"] == 2
    assert result.stats["transposes_left"] == 2  # entry and exit, none between the convs
    x = _rand(1, 8, 10, 10, seed=6)
    got, want = run_through_target(result.module, x), run_through_target(before, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_x86_layout_option():
    auto = make_target("x86").stages()["legalize"]
    assert any(p.startswith("layout{sparse_nchw_density=") for p in auto)
    assert "layout" in make_target("x86", {"layout": "NHWC"}).stages()["legalize"]
    assert "layout" in make_target("x86", {"sparse": "false"}).stages()["legalize"]
    assert not any(
        p.startswith("layout") for p in make_target("x86", {"layout": "NCHW"}).stages()["legalize"]
    )
    with pytest.raises(TargetError, match="NHWC or NCHW"):
        make_target("x86", {"layout": "NCWH"})


@pytest.mark.slow
def test_mobilenet_v2_all_convs_nhwc_and_outputs_match_onnxruntime(tmp_path):
    from pathlib import Path

    import graphopt
    from graphopt.reference import ort_run, ort_session

    path = Path.home() / ".cache/graphopt/models/mobilenet_v2.onnx"
    if not path.is_file():
        pytest.skip("mobilenet_v2.onnx not exported (bench/models/export.py)")
    art = graphopt.compile(path, tmp_path / "a")  # x86 legalize stage: layout=NHWC
    (row,) = [r for r in art.manifest["report"]["passes"] if r.get("pass") == "layout"]
    assert row["stats"]["convs_converted"] == 52, row  # every conv: plain or depthwise
    x = _rand(1, 3, 224, 224, seed=9)
    out = art.outputs[0].name
    want = ort_run(ort_session(path), {"input": x})[out]
    got = art.run({"input": x})[out]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_isolated_convs_keep_their_layout():
    """Convs with opaque kernels between them (fp32 layers between int8 kernels) would each
    pay two transposes: nothing is converted."""

    def build(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(W1), padding=1))
        y = bb.emit_te(topi.nn.relu, y)  # a TE kernel: opaque to ConvertLayout
        y = bb.emit(relax.op.nn.conv2d(y, relax.const(_rand(16, 16, 1, 1, seed=8))))
        return bb.emit_te(topi.nn.relu, y)

    before = single_input_module((1, 8, 10, 10), build)
    result = apply_checked(make_pass("layout"), before)
    assert not result.modified and result.stats["convs_converted"] == 0
