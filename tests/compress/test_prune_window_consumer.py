"""Structured pruning whose consumer is a KxK conv (a ResNet block's second conv): the
region, the window rows the refit fits on, the rewrite against a hand-pruned ONNX model run by
onnxruntime, block distillation through the windows, and `--prune macs` end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.compress.channels.chains import find_regions, taps, window_rows
from graphopt.compress.channels.method import ChannelOptions, Channels
from graphopt.compress.common.layers import find_layers
from graphopt.compress.int4.hessian import conv_rows
from graphopt.compress.prune.layers import as_kn, from_kn
from graphopt.pass_infra import make_pass
from graphopt.pipeline import run_passes
from graphopt.testing import run_module
from tests.compress.test_prune_channels import _conv_model, _graph, _ort, _weights

C, H, SIZE = 8, 24, 12  # block channels, inner channels, image size


def _conv_net(name: str, nodes: list, w: dict, out_size: int) -> onnx.ModelProto:
    """x [1, C, SIZE, SIZE] -> `nodes` -> y [1, C, out_size, out_size], weights `w`."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, out_size, out_size])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in w.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv_weights(seed: int, **layers: tuple) -> dict[str, np.ndarray]:
    """w<name> [out, in, k, k] / scale and b<name> [out] per layer name -> (out, in, k, scale)."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, (out, inp, k, scale) in layers.items():
        w[f"w{name}"] = rng.standard_normal((out, inp, k, k)) / scale
        w[f"b{name}"] = rng.standard_normal(out) / 4
    return w


def _block_weights() -> dict[str, np.ndarray]:
    return _conv_weights(11, **{"1": (H, C, 3, 8), "2": (C, H, 3, 14)})


def _block_model(w: dict | None = None, strided: bool = False) -> onnx.ModelProto:
    """x -> 3x3 conv -> relu -> 3x3 conv (+ x: a ResNet basic block; `strided`: the second
    conv strided 2 with asymmetric padding and no skip) -> y."""
    w = w or _block_weights()
    second = dict(strides=[2, 2], pads=[0, 1, 1, 0]) if strided else dict(pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("Conv", ["h", "w2", "b2"], ["o" if not strided else "y"], **second),
    ]
    if not strided:
        nodes.append(helper.make_node("Add", ["o", "x"], ["y"]))
    return _conv_net("block", nodes, w, SIZE // 2 if strided else SIZE)


def reduce_model() -> onnx.ModelProto:
    """x -> 1x1 conv -> relu -> 3x3 conv, stride 2, asymmetric padding -> y (an Inception
    branch's reduction and conv): a region block distillation can train."""
    w = _conv_weights(19, **{"1": (H, C, 1, 3), "2": (C, H, 3, 14)})
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("Conv", ["h", "w2", "b2"], ["y"], strides=[2, 2], pads=[0, 1, 1, 0]),
    ]
    return _conv_net("reduce", nodes, w, SIZE // 2)


@pytest.mark.parametrize("strided", [False, True])
def test_a_kxk_conv_ends_a_region(strided):
    regions = find_regions(_graph(_block_model(strided=strided)))
    assert len(regions) == 1
    r = regions[0]
    assert r.channels == H and r.consumer.kind == "conv2d" and taps(r.consumer) == 9


@pytest.mark.parametrize(
    "attrs",
    [
        dict(pads=[1, 1, 1, 1]),
        dict(strides=[2, 2], pads=[0, 1, 1, 0]),
        dict(dilations=[2, 2], pads=[2, 1, 2, 1]),
        dict(strides=[2, 1]),
    ],
)
def test_window_rows_times_the_weight_are_the_conv(attrs):
    """conv_rows(x) @ as_kn(W) is the conv (onnxruntime), for strides, asymmetric padding and
    dilation; from_kn inverts as_kn."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    x = rng.standard_normal((1, 3, 9, 10)).astype(np.float32)
    graph = helper.make_graph(
        [node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    want = _ort(model, x)
    layer = find_layers(_graph(model)["main"])[0]
    rows = conv_rows(layer, x.astype(np.float64))
    got = (rows @ as_kn(layer)).reshape(*want.shape[2:], -1).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(from_kn(layer, as_kn(layer)), layer.weight)


@pytest.mark.parametrize("strided", [False, True])
def test_rewrite_cuts_the_consumers_input_channels(tmp_path, strided):
    model = _block_model(strided=strided)
    mod = _graph(model)
    name = find_regions(mod)[0].name
    keep = np.array([0, 2, 3, 5, 8, 13, 16, 21])
    rng = np.random.default_rng(13)
    w_new = rng.standard_normal((len(keep) * 9, C)).astype(np.float32) / 10
    bias = rng.standard_normal(C).astype(np.float32)
    plan = {f"{name}.keep": keep, f"{name}.weight": w_new, f"{name}.bias": bias}
    np.savez(tmp_path / "p.npz", **plan)
    out = run_passes(mod, [make_pass("prune-channels", {"plan": str(tmp_path / "p.npz")})])
    w = _block_weights()
    pruned = {
        "w1": w["w1"][keep], "b1": w["b1"][keep],
        "w2": w_new.T.reshape(C, len(keep), 3, 3), "b2": w["b2"] + bias,
    }  # fmt: skip
    want_model = _block_model(pruned, strided=strided)
    x = rng.standard_normal((1, C, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(run_module(out, [x])[0], _ort(want_model, x), rtol=1e-4, atol=1e-4)


def test_window_rows_are_each_channels_taps():
    np.testing.assert_array_equal(window_rows(np.array([1, 3]), 4), [4, 5, 6, 7, 12, 13, 14, 15])


@pytest.mark.parametrize("sequential", [True, False])
def test_prune_macs_end_to_end_on_a_resnet_block(tmp_path, sequential):
    model = _block_model()
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(14).standard_normal([48, C, SIZE, SIZE]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    opts = ChannelOptions(
        macs=0.7, calibration=str(tmp_path / "calib.npz"), multiple=4, sequential=sequential,
        distill=20,
    )  # fmt: skip
    art = graphopt.compile(tmp_path / "m.onnx", tmp_path / "out", compression=[Channels(opts)])
    m = art.manifest["channels"]
    (region,) = m["regions"]
    assert m["ratio"] <= 0.72 and region["kept"] % 4 == 0 and region["kept"] < H
    assert m["refit"] == ("sequential" if sequential else "one-shot")
    xs = np.random.default_rng(15).standard_normal([1, C, SIZE, SIZE]).astype(np.float32)
    want, got = _ort(model, xs), art.run({"x": xs})["y"]
    cos = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.95


def test_a_bottleneck_keeps_the_region_into_its_kxk_conv():
    """1x1 -> relu -> 3x3 -> relu -> 1x1 (+ x): the 3x3 conv ends one region and starts
    another; a layer is never cut on both axes, so only the first region stays."""
    w = _conv_weights(16, a=(H, C, 1, 3), b=(H, H, 3, 14), c=(C, H, 1, 5))
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a0"]),
        helper.make_node("Relu", ["a0"], ["a"]),
        helper.make_node("Conv", ["a", "wb", "bb"], ["b0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b0"], ["b"]),
        helper.make_node("Conv", ["b", "wc", "bc"], ["c"]),
        helper.make_node("Add", ["c", "x"], ["y"]),
    ]
    (region,) = find_regions(_graph(_conv_net("bottleneck", nodes, w, SIZE)))
    assert region.producer.weight_shape == [H, C, 1, 1]
    assert region.consumer.weight_shape == [H, H, 3, 3]


@pytest.mark.parametrize("make", [_block_model, _conv_model], ids=["resnet", "inverted"])
def test_prune_macs_makes_the_same_cut_at_every_level(tmp_path, make):
    """`--prune macs` runs before the passes that fuse layers away, so -O0 to -O3 find the
    same region and keep the same channels; each build stays close to onnxruntime."""
    import json

    from graphopt.cli import main

    model = make()
    onnx.save(model, tmp_path / "m.onnx")
    shape = [int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(17).standard_normal([32, *shape[1:]]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    xs = np.random.default_rng(18).standard_normal(shape).astype(np.float32)
    want = _ort(model, xs)
    kept = {}
    for level in (0, 1, 2, 3):
        out = tmp_path / f"O{level}"
        argv = [
            "compile", str(tmp_path / "m.onnx"), "-o", str(out), "-q", f"-O{level}",
            "--prune", "macs=0.75", "--calibration", str(tmp_path / "calib.npz"),
        ]  # fmt: skip
        assert main(argv) == 0
        regions = json.loads((out / "manifest.json").read_text())["channels"]["regions"]
        kept[level] = [(r["region"], r["kept"]) for r in regions]
        got = graphopt.load(out).run({"x": xs})["y"]
        cos = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
        assert cos > 0.9, (level, cos)
    assert len(set(map(tuple, kept.values()))) == 1 and kept[0], kept


def test_distillation_trains_through_the_windows(tmp_path):
    """A 1x1 producer and a strided 3x3 consumer: the block's forward is what the rewritten
    graph computes, and `distill=` trains it (held-out error no worse than the refit's)."""
    from tests.compress.test_distill_channels import _net, rewrite_trained

    model = reduce_model()
    mod = _graph(model)
    net = _net(mod, 20)
    _decision, out = rewrite_trained(mod, net, tmp_path)
    x = np.random.default_rng(21).standard_normal((1, C, SIZE, SIZE)).astype(np.float32)
    rows = net.forward(x.transpose(0, 2, 3, 1))[0]
    b2 = _weights(model)["b2"]
    want = rows.reshape(1, SIZE // 2, SIZE // 2, C).transpose(0, 3, 1, 2) + b2[:, None, None]
    np.testing.assert_allclose(run_module(out, [x])[0], want, rtol=1e-4, atol=1e-4)

    onnx.save(model, tmp_path / "m.onnx")
    xs = np.random.default_rng(22).standard_normal([32, C, SIZE, SIZE]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    opts = ChannelOptions(macs=0.7, calibration=str(tmp_path / "calib.npz"), multiple=4, distill=40)
    art = graphopt.compile(tmp_path / "m.onnx", tmp_path / "out", compression=[Channels(opts)])
    (gain,) = art.manifest["channels"]["distill"]["held_out_gain"].values()
    assert gain >= 1.0
