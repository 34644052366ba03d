"""Structured pruning through a concatenation (graphopt/compress/channels/concat.py): the
region, the rewrite against a hand-pruned ONNX model run by onnxruntime, a branch that keeps
no channel, and `--prune macs` end to end on a SqueezeNet fire module."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.compress.channels.chains import find_regions
from graphopt.compress.channels.concat import ConcatRegion
from graphopt.compress.channels.method import ChannelOptions, Channels
from graphopt.pass_infra import make_pass
from graphopt.pipeline import run_passes
from graphopt.testing import run_module
from tests.compress.test_prune_channels import _graph, _ort

C, S, E1, E3, OUT = 8, 4, 6, 10, 8  # input, squeeze, 1x1 and 3x3 expansions, output channels


def _fire_model(weights: dict | None = None) -> onnx.ModelProto:
    """x -> squeeze 1x1 -> relu -> (expand 1x1 -> relu | expand 3x3 -> relu) -> concat ->
    1x1 conv -> y (SqueezeNet's fire module and the next layer)."""
    w = weights or _fire_weights()
    nodes = [
        helper.make_node("Conv", ["x", "ws", "bs"], ["s0"]),
        helper.make_node("Relu", ["s0"], ["s"]),
        helper.make_node("Conv", ["s", "w1", "b1"], ["e10"]),
        helper.make_node("Relu", ["e10"], ["e1"]),
        helper.make_node("Conv", ["s", "w3", "b3"], ["e30"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["e30"], ["e3"]),
        helper.make_node("Concat", ["e1", "e3"], ["c"], axis=1),
        helper.make_node("Conv", ["c", "wq", "bq"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fire",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT, 10, 10])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in w.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fire_weights() -> dict:
    rng = np.random.default_rng(0)
    return {
        "ws": rng.standard_normal((S, C, 1, 1)) / 3,
        "bs": rng.standard_normal(S) / 4,
        "w1": rng.standard_normal((E1, S, 1, 1)) / 2,
        "b1": rng.standard_normal(E1) / 4,
        "w3": rng.standard_normal((E3, S, 3, 3)) / 5,
        "b3": rng.standard_normal(E3) / 4,
        "wq": rng.standard_normal((OUT, E1 + E3, 1, 1)) / 4,
        "bq": rng.standard_normal(OUT) / 4,
    }


def test_the_concatenation_is_one_region():
    regions = find_regions(_graph(_fire_model()))
    assert len(regions) == 1  # the squeeze output has two readers: not a region
    (r,) = regions
    assert isinstance(r, ConcatRegion)
    assert r.channels == E1 + E3 and r.consumer.kind == "conv2d"
    assert [(b.offset, b.channels, b.producer.weight_shape[2]) for b in r.branches] == [
        (0, E1, 1),
        (E1, E3, 3),
    ]


@pytest.mark.parametrize(
    "keep",
    [np.array([0, 2, 3, 7, 9, 15]), np.arange(E1, E1 + E3, 2)],
    ids=["both_branches", "3x3_branch_only"],
)
def test_rewrite_equals_the_hand_pruned_model(keep, tmp_path):
    """The pass with a plan equals onnxruntime on the ONNX model with those channels cut
    from each expansion and the consumer given the plan's weight and bias."""
    model = _fire_model()
    mod = _graph(model)
    (r,) = find_regions(mod)
    rng = np.random.default_rng(1)
    w_new = rng.standard_normal((len(keep), OUT)).astype(np.float32) / 3
    bias = rng.standard_normal(OUT).astype(np.float32)
    plan = {f"{r.name}.keep": keep, f"{r.name}.weight": w_new, f"{r.name}.bias": bias}
    np.savez(tmp_path / "p.npz", **plan)
    out = run_passes(mod, [make_pass("prune-channels", {"plan": str(tmp_path / "p.npz")})])

    w = _fire_weights()
    k1, k3 = keep[keep < E1], keep[keep >= E1] - E1
    cut = {**w, "w1": w["w1"][k1], "b1": w["b1"][k1], "w3": w["w3"][k3], "b3": w["b3"][k3]}
    cut.update(wq=w_new.T[:, :, None, None], bq=w["bq"] + bias)
    pruned = _fire_model(cut)
    if not len(k1):  # the 1x1 branch is gone: the concatenation holds the 3x3 branch alone
        nodes = [n for n in pruned.graph.node if n.output[0] not in ("e10", "e1")]
        nodes[-2].input[:] = ["e3"]
        pruned.graph.ClearField("node")
        pruned.graph.node.extend(nodes)
        pruned.graph.ClearField("initializer")
        kept = {k: v for k, v in cut.items() if k not in ("w1", "b1")}
        pruned.graph.initializer.extend(
            numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in kept.items()
        )
    x = rng.standard_normal((1, C, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(run_module(out, [x])[0], _ort(pruned, x), rtol=1e-4, atol=1e-4)


def test_prune_macs_through_a_concatenation(tmp_path):
    model = _fire_model()
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(2).standard_normal([64, C, 10, 10]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    opts = ChannelOptions(macs=0.8, calibration=str(tmp_path / "calib.npz"), multiple=2)
    art = graphopt.compile(tmp_path / "m.onnx", tmp_path / "out", compression=[Channels(opts)])
    m = art.manifest["channels"]
    (row,) = m["regions"]
    assert row["region"].startswith("concat_") and row["kept"] < E1 + E3
    assert m["ratio"] <= 0.85
    xs = np.random.default_rng(3).standard_normal([1, C, 10, 10]).astype(np.float32)
    want, got = _ort(model, xs), art.run({"x": xs})["y"]
    assert float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want)) > 0.9
