"""fold-pad: importer zero-pad kernels folded into the padding of the conv2d that reads them."""

from __future__ import annotations

import numpy as np
from tvm import relax, topi

from graphopt import _tvm
from graphopt.pass_infra import make_pass
from graphopt.target_infra import make_target
from graphopt.testing import apply_checked, run_through_target, single_input_module

HOST = make_target("x86")


def _module(build, shape=(1, 3, 16, 16)):
    return single_input_module(shape, build)


W = np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype("float32")


def _tf_pad_conv(bb, x, value=0.0, before=(0, 0, 0, 0), after=(0, 0, 1, 1)):
    """What the ONNX importer makes of a TF 'SAME' stride-2 conv: a pad kernel, padding 0."""
    p = bb.emit_te(topi.nn.pad, x, list(before), list(after), value)
    return relax.op.nn.conv2d(p, relax.const(W), strides=2, padding=[1, 0, 0, 0])


def _expected(bb, x):
    return relax.op.nn.conv2d(x, relax.const(W), strides=2, padding=[1, 0, 1, 1])


def test_before_expected_and_numbers():
    before = _module(_tf_pad_conv)
    result = apply_checked(make_pass("fold-pad"), before)
    assert result.stats["pads_folded"] == 1
    got = relax.transform.DeadCodeElimination()(result.module)
    want = relax.transform.DeadCodeElimination()(_module(_expected))
    assert _tvm.structural_equal(got["main"], want["main"]), _tvm.to_script(got)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype("float32")
    a, b = run_through_target(result.module, x), run_through_target(before, x)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


W4 = np.ones((8, 4, 3, 3), "float32")


def _channel_pad_conv(bb, x):
    p = bb.emit_te(topi.nn.pad, x, [0, 1, 0, 0], [0, 0, 1, 1], 0.0)
    return relax.op.nn.conv2d(p, relax.const(W4), strides=2)


def test_does_not_fire_on_nonzero_channel_or_missing_pads():
    cases = [
        lambda bb, x: _tf_pad_conv(bb, x, value=1.0),  # not a zero pad
        _channel_pad_conv,  # pads channels too
        lambda bb, x: relax.op.nn.conv2d(x, relax.const(W), padding=1),  # no pad kernel
    ]
    for build in cases:
        result = apply_checked(make_pass("fold-pad"), _module(build))
        assert not result.modified and result.stats["pads_folded"] == 0


def test_in_the_x86_legalize_stage():
    assert "fold-pad" in HOST.stages()["legalize"]
