"""The probe graph (graphopt/compress/int8/probe.py): one build that calibration and
sensitivity share must be the fp32 graph at flags 0 and the graph compile quantizes at flags 1."""

from __future__ import annotations

import model_builders as mb
import numpy as np
import pytest

from graphopt.build import build_runner
from graphopt.compress.int8.calibrate import calibrate, tap_module
from graphopt.compress.int8.equalize import KEY, equalize_scales, find_pairs, scaled_module
from graphopt.compress.int8.probe import ProbeRunner, Settings, probe_module
from graphopt.compress.int8.ranges import write_ranges
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import host_target


def _feeds(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, 4, 10, 10)).astype(np.float32) for _ in range(n)]


def _calibrated(mod):
    """Ranges with bias corrections, after one equalization round (as compile calibrates)."""
    pairs = find_pairs(mod)
    assert len(pairs) == 1
    found = {}

    def equalize(first):
        name = pairs[0].consumer.name
        k = equalize_scales(pairs[0], first[name]["channel_max"], first[name]["input"][1])
        found.update(scales={name: k}, mod=scaled_module(mod, {name: k}))
        return found["mod"], found["scales"]

    calib = [{"x": x} for x in _feeds(16, 1)]
    ranges = calibrate(mod, calib, "minmax", bias_correction=True, equalize=equalize)
    for name, k in found["scales"].items():
        ranges[name][KEY] = k.tolist()
    return ranges, found["scales"]


def _module(residual: bool = True):
    model = mb.expand_depthwise(residual=residual)
    return run_passes(import_onnx(model).mod, instantiate(parse_pipeline("O2")))


def test_taps_are_layer_inputs_and_join_tensors():
    probe = probe_module(_module(), Settings())
    assert len(probe.layers) == 3 and probe.taps == 3 + 3  # one join: a, b and a + b
    assert [probe.layers[i].name for i in probe.equalized] == ["conv2d_1"]


@pytest.mark.parametrize(
    "residual, skip",
    [(False, ()), (True, ()), (True, ("add_0",)), (True, ("conv2d_2",))],
)
def test_flags_select_the_fp32_graph_or_the_quantized_one(tmp_path, residual, skip):
    """Flags 0 are the fp32 graph; flags 1 but the skipped units are the graph `quantize`
    makes with that skip list, residual joins included (their operands' ranges move with
    the skip list: conv2d_2 reads the join's operand b)."""
    mod = _module(residual=residual)
    settings = Settings()
    probe = ProbeRunner(probe_module(mod, settings), host_target())
    n = probe.n
    fp32, taps = build_runner(mod), build_runner(tap_module(mod)[0])
    ranges, scales = _calibrated(mod)
    probe.configure(ranges, scales, settings)
    for x in _feeds(4, 2):  # flags 0: fp32 exactly, whatever the ranges
        np.testing.assert_array_equal(probe.outputs([x], np.zeros(n))[0], fp32([x])[0])
        for got, want in zip(probe.taps([x]), taps([x])):
            np.testing.assert_array_equal(got, want)

    # the graph compile builds (equalize, bias-correction, quantize) in fake-quant form
    path = tmp_path / "ranges.json"
    write_ranges(path, ranges, "minmax")
    opts = {"ranges": str(path), **({"skip": ":".join(skip)} if skip else {})}
    passes = [make_pass("equalize", {"ranges": str(path)}), make_pass("bias-correction", opts)]
    quantized = run_passes(mod, [*passes, make_pass("quantize", opts)])
    fq = build_runner(quantized)
    flags = np.array([u.name not in skip for u in probe.probe.units], np.float32)
    int8_vs_fp32 = []
    for x in _feeds(8, 3):
        got, want, ref = probe.outputs([x], flags)[0], fq([x])[0], fp32([x])[0]
        # equal but for a few one-level rounding flips, where the probe's float rounding
        # differs (it scales the depthwise input instead of its weights), each of which then
        # reaches every output channel at that position
        off = np.abs(got - want) > 1e-5 * np.abs(ref).max()
        assert off.mean() <= 0.05, f"{off.sum()} of {off.size} outputs differ"
        assert np.abs(got - want).max() <= 2 * np.abs(want - ref).max()  # one level at most
        int8_vs_fp32.append(np.abs(want - ref).max() / np.abs(ref).max())
    assert max(int8_vs_fp32) > 5e-3


def test_one_flag_quantizes_one_layer():
    mod = _module()
    probe = ProbeRunner(probe_module(mod, Settings(), taps=False), host_target())
    ranges, scales = _calibrated(mod)
    probe.configure(ranges, scales, Settings())
    x = _feeds(1, 4)[0]
    assert probe.n == 4  # three layers, one join
    base = probe.outputs([x], np.zeros(4))[0]
    moved = [np.abs(probe.outputs([x], np.eye(4)[i])[0] - base).max() for i in range(4)]
    assert all(m > 0 for m in moved)
    together = np.abs(probe.outputs([x], np.ones(4))[0] - base).max()
    assert together >= 0.5 * max(moved)


def test_fp32_outputs_of_calibrated_feeds_are_reused():
    """Sensitivity's fp32 reference on the calibration feeds costs no second run."""
    probe = ProbeRunner(probe_module(_module(), Settings()), host_target())
    x = _feeds(1, 5)[0]
    probe.taps([x])
    runs = []
    real_run = probe._run
    probe._run = lambda *a: runs.append(1) or real_run(*a)
    first = probe.outputs([x], np.zeros(4))
    assert runs == [] and first[0].shape == (1, 4, 10, 10)
    probe.outputs([x.copy()], np.zeros(4))  # another array: run
    probe.outputs([x], np.ones(4))  # quantized: run
    assert len(runs) == 2
