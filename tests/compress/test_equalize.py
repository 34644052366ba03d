"""Activation equalization into depthwise convs (graphopt/compress/int8/equalize.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.build import build_runner
from graphopt.compress.int8.calibrate import calibrate
from graphopt.compress.int8.equalize import KEY, equalize_scales, find_pairs, scaled_module
from graphopt.compress.int8.ranges import write_ranges
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes


def block(seed: int = 0) -> onnx.ModelProto:
    """x [1,4,12,12] -> conv 1x1 (8 ch, bias) -> Clip(0, 6) -> depthwise 3x3 (bias) -> y.

    Half the expanded channels are 50x smaller than the others (as batch-norm folding leaves
    MobileNets): one int8 scale for the depthwise input gives them a couple of levels."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    w1[4:] *= 0.02
    b1 = (np.abs(rng.standard_normal(8)) * 0.1).astype(np.float32)
    b1[4:] *= 0.02
    w2 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b2 = rng.standard_normal(8).astype(np.float32)
    lo, hi = np.array(0.0, np.float32), np.array(6.0, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Clip", ["h", "lo", "hi"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], group=8, pads=[1, 1, 1, 1]),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (lo, "lo"), (hi, "hi"))
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_equalization_keeps_fp32_and_cuts_the_int8_error(tmp_path):
    mod = run_passes(import_onnx(block()).mod, instantiate(parse_pipeline("O2")))
    pairs = find_pairs(mod)
    assert [(p.producer.name, p.consumer.name) for p in pairs] == [("conv2d_0", "conv2d_1")]
    rng = np.random.default_rng(1)
    calib = [{"x": rng.uniform(0, 1, (1, 4, 12, 12)).astype(np.float32)} for _ in range(16)]
    test = [rng.uniform(0, 1, (1, 4, 12, 12)).astype(np.float32) for _ in range(8)]

    first = calibrate(mod, calib, "minmax", channel_max=True)
    entry = first["conv2d_1"]
    k = equalize_scales(pairs[0], entry["channel_max"], entry["input"][1])
    assert np.all(k[4:] > 10) and np.all(k >= 1)  # the small channels are stretched
    scaled = scaled_module(mod, {"conv2d_1": k})

    # The pass (what compile runs) makes the same graph; fp32 results are unchanged.
    ranges = calibrate(scaled, calib, "minmax")
    ranges["conv2d_1"][KEY] = k.tolist()
    path = tmp_path / "r.json"
    write_ranges(path, ranges, "minmax")
    result = make_pass("equalize", {"ranges": str(path)}).run(mod)
    assert result.stats["equalized"] == 1
    ref, eq = build_runner(mod), build_runner(result.module)
    for x in test:
        np.testing.assert_allclose(eq([x])[0], ref([x])[0], rtol=1e-4, atol=1e-4)

    # int8 error (fake-quant) with and without equalization, on held-out inputs.
    plain_path = tmp_path / "plain.json"
    write_ranges(plain_path, first, "minmax")
    plain_q = make_pass("quantize", {"ranges": str(plain_path)}).run(mod).module
    eq_q = make_pass("quantize", {"ranges": str(path)}).run(result.module).module
    run_plain, run_eq = build_runner(plain_q), build_runner(eq_q)

    def sq_err(run):  # per channel, over the held-out inputs
        return np.mean([((run([x])[0] - ref([x])[0]) ** 2).mean(axis=(0, 2, 3)) for x in test], 0)

    plain, equalized = sq_err(run_plain), sq_err(run_eq)
    assert equalized[4:].mean() < 0.1 * plain[4:].mean(), (equalized, plain)  # small channels
    assert equalized.mean() < 0.7 * plain.mean()


def test_only_depthwise_consumers():
    """expand -> relu6 -> depthwise -> relu6 -> project: only the expand/depthwise pair (a
    groups=1 consumer's weight columns would absorb the stretch: measured worse)."""
    m = block()
    w3 = numpy_helper.from_array(np.ones((6, 8, 1, 1), np.float32), "w3")
    m.graph.initializer.append(w3)
    m.graph.node.append(helper.make_node("Clip", ["y", "lo", "hi"], ["r2"]))
    m.graph.node.append(helper.make_node("Conv", ["r2", "w3"], ["z"]))
    m.graph.output.pop()
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6, 12, 12]))
    mod = run_passes(import_onnx(m).mod, instantiate(parse_pipeline("O2")))
    assert [(p.producer.name, p.consumer.name) for p in find_pairs(mod)] == [
        ("conv2d_0", "conv2d_1")
    ]
