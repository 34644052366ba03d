"""Structured pruning of hidden channels: regions, the rewrite, the refit, the method."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.compress.channels.chains import find_regions
from graphopt.compress.channels.fit import RegionStats, channel_scores, choose_kept, refit
from graphopt.compress.channels.method import ChannelOptions, Channels
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.reference import ort_run, ort_session
from graphopt.testing import run_module

D, H = 32, 64  # FFN width, hidden units
C, E = 8, 48  # conv block channels, expansion channels


def _ffn_model() -> onnx.ModelProto:
    """x[1, 16, 32] -> MatMul -> +b -> GELU (erf form, as exporters write it) -> MatMul -> +b
    -> + x."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((D, H)) / 6,
        "b1": rng.standard_normal(H) / 4,
        "w2": rng.standard_normal((H, D)) / 8,
        "b2": rng.standard_normal(D) / 4,
        "sqrt2": np.array(np.sqrt(2.0)),
        "one": np.array(1.0),
        "half": np.array(0.5),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h"]),
        helper.make_node("Div", ["h", "sqrt2"], ["hd"]),
        helper.make_node("Erf", ["hd"], ["he"]),
        helper.make_node("Add", ["he", "one"], ["hp"]),
        helper.make_node("Mul", ["h", "hp"], ["hm"]),
        helper.make_node("Mul", ["hm", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["o"]),
        helper.make_node("Add", ["o", "x"], ["y"]),
    ]
    return _model(nodes, inits, [1, 16, D], [1, 16, D])


def _conv_model() -> onnx.ModelProto:
    """An inverted residual: 1x1 expand -> relu6 -> depthwise 3x3 -> relu6 -> 1x1 -> + x."""
    rng = np.random.default_rng(1)
    inits = {
        "we": rng.standard_normal((E, C, 1, 1)) / 3,
        "be": rng.standard_normal(E) / 4,
        "wd": rng.standard_normal((E, 1, 3, 3)) / 3,
        "bd": rng.standard_normal(E) / 4,
        "wp": rng.standard_normal((C, E, 1, 1)) / 7,
        "bp": rng.standard_normal(C) / 4,
        "lo": np.array(0.0),
        "hi": np.array(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "we", "be"], ["e"]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["er"]),
        helper.make_node("Conv", ["er", "wd", "bd"], ["d"], group=E, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["dr"]),
        helper.make_node("Conv", ["dr", "wp", "bp"], ["p"]),
        helper.make_node("Add", ["p", "x"], ["y"]),
    ]
    return _model(nodes, inits, [1, C, 12, 12], [1, C, 12, 12])


def _model(nodes, inits: dict, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _graph(model: onnx.ModelProto):
    return run_passes(import_onnx(model).mod, instantiate(parse_pipeline("O2")))


def _gelu(h):
    from math import erf

    return 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort_session(model.SerializeToString())
    return ort_run(session, {"x": x})["y"]


def _apply(mod, tmp_path, keep, weight, bias):
    """prune-channels with a hand-made plan for the model's one region."""
    name = find_regions(mod)[0].name
    plan = {f"{name}.keep": keep, f"{name}.weight": weight, f"{name}.bias": bias}
    np.savez(tmp_path / "p.npz", **plan)
    return run_passes(mod, [make_pass("prune-channels", {"plan": str(tmp_path / "p.npz")})])


def _weights(model) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("make", [_ffn_model, _conv_model])
def test_each_block_has_one_region(make):
    regions = find_regions(_graph(make()))
    assert len(regions) == 1
    r = regions[0]
    assert r.channels == (H if make is _ffn_model else E)
    assert r.consumer.kind == ("matmul" if make is _ffn_model else "conv2d")


def test_rewrite_computes_the_plan_ffn(tmp_path):
    model = _ffn_model()
    mod = _graph(model)
    keep = np.arange(0, H, 2)
    rng = np.random.default_rng(2)
    w_new = rng.standard_normal((len(keep), D)).astype(np.float32)
    bias = rng.standard_normal(D).astype(np.float32)
    out = _apply(mod, tmp_path, keep, w_new, bias)
    w = _weights(model)
    x = rng.standard_normal((1, 16, D)).astype(np.float32)
    g = _gelu(x @ w["w1"][:, keep] + w["b1"][keep])
    want = g @ w_new + bias + w["b2"] + x
    np.testing.assert_allclose(run_module(out, [x])[0], want, rtol=1e-4, atol=1e-4)


def test_rewrite_computes_the_plan_conv(tmp_path):
    model = _conv_model()
    mod = _graph(model)
    keep = np.arange(8, 40)
    rng = np.random.default_rng(3)
    w_new = rng.standard_normal((len(keep), C)).astype(np.float32) / 5
    bias = rng.standard_normal(C).astype(np.float32)
    out = _apply(mod, tmp_path, keep, w_new, bias)
    w = _weights(model)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    new = {
        "we": w["we"][keep], "be": w["be"][keep], "wd": w["wd"][keep], "bd": w["bd"][keep],
        "wp": w_new.T[:, :, None, None], "bp": w["bp"] + bias,
    }  # fmt: skip
    for t in pruned.graph.initializer:
        if t.name in new:
            t.CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(new[t.name], np.float32), t.name)
            )
    pruned.graph.node[2].attribute[0].i = len(keep)  # group
    x = rng.standard_normal((1, C, 12, 12)).astype(np.float32)
    want = _ort(pruned, x)
    np.testing.assert_allclose(run_module(out, [x])[0], want, rtol=1e-4, atol=1e-4)


def test_refit_recovers_what_dropped_correlated_channels_carried():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((2000, 16))
    a = np.concatenate([base, base @ rng.standard_normal((16, 16)) * 0.5 + 0.3], axis=1)
    w = rng.standard_normal((32, 8))
    stats = RegionStats()
    stats.add(a)
    mu, cov = stats.moments(1e-6)
    keep = np.arange(16)  # the second half is a linear function of the first, plus a mean
    w_new, c = refit(w, mu, cov, keep)
    target = a @ w
    refit_err = np.linalg.norm(a[:, keep] @ w_new + c - target)
    drop_err = np.linalg.norm(a[:, keep] @ w[keep] - target)
    assert refit_err < 0.05 * drop_err
    scores = channel_scores(w, cov)
    assert scores.shape == (32,) and np.all(scores >= 0)


def test_choose_kept_meets_the_target_in_multiples():
    rng = np.random.default_rng(5)
    scores = {"a": rng.random(64), "b": rng.random(48) * 10}
    macs = {"a": 100.0, "b": 100.0}
    kept = choose_kept(scores, macs, target=0.5, multiple=8)
    assert all(len(k) % 8 == 0 for k in kept.values())
    total = sum(len(k) for k in kept.values())
    assert 0.5 * 112 - 16 <= total <= 0.5 * 112  # the target met after rounding to 8s
    assert len(kept["a"]) < len(kept["b"]) * 64 / 48  # region a (lower scores) loses more


@pytest.mark.parametrize("make", [_ffn_model, _conv_model])
def test_channels_method_end_to_end(make, tmp_path):
    model = make()
    onnx.save(model, tmp_path / "m.onnx")
    shape = [int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(6).standard_normal([64, *shape[1:]]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    opts = ChannelOptions(macs=0.75, calibration=str(tmp_path / "calib.npz"), multiple=4)
    method = Channels(opts)
    art = graphopt.compile(tmp_path / "m.onnx", tmp_path / "out", compression=[method])
    m = art.manifest["channels"]
    assert m["ratio"] <= 0.8 and all(r["kept"] % 4 == 0 for r in m["regions"])
    assert m["refit"] == "sequential"  # 64 feeds: rows enough for the region's channels
    assert "artifact" in m["accuracy"]
    xs = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    want = _ort(model, xs)
    got = art.run({"x": xs})["y"]
    cos = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.95


def test_a_layer_is_never_both_producer_and_consumer():
    """x -> MatMul -> Relu -> MatMul -> Relu -> MatMul: the middle layer consumes the first
    region and could produce a second; only the first region is kept (cutting both axes of
    one weight is not supported)."""
    rng = np.random.default_rng(8)
    inits = {f"w{i}": rng.standard_normal((D, D)) / 6 for i in range(3)}
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["a"]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("MatMul", ["ar", "w1"], ["b"]),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("MatMul", ["br", "w2"], ["y"]),
    ]
    regions = find_regions(_graph(_model(nodes, inits, [4, D], [4, D])))
    assert [(r.producer.name, r.consumer.name) for r in regions] == [("matmul_0", "matmul_1")]


def test_channels_escaping_to_a_residual_are_not_a_region():
    """x -> MatMul -> Relu -> (+ x) -> MatMul: the hidden tensor is read by the residual add."""
    rng = np.random.default_rng(9)
    inits = {f"w{i}": rng.standard_normal((D, D)) / 6 for i in range(2)}
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["a"]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Add", ["ar", "x"], ["s"]),
        helper.make_node("MatMul", ["s", "w1"], ["y"]),
    ]
    assert find_regions(_graph(_model(nodes, inits, [4, D], [4, D]))) == []


def test_cli_prune_macs(tmp_path, capsys):
    from graphopt.cli import main

    onnx.save(_ffn_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(10).standard_normal((32, 16, D)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    base = ["compile", str(tmp_path / "m.onnx"), "--prune"]
    assert main([*base, "macs=0.7", "-o", str(tmp_path / "bad")]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    assert main([*base, "macs=x", "-o", str(tmp_path / "bad")]) == 2
    assert "not a number" in capsys.readouterr().err
    calib_args = ["--calibration", str(tmp_path / "calib.npz")]
    assert main([*base, "macs=0.7,heads=2", *calib_args, "-o", str(tmp_path / "bad")]) == 2
    assert "unknown setting" in capsys.readouterr().err
    assert main([*base, "macs=0.7,regions=x", *calib_args, "-o", str(tmp_path / "bad")]) == 2
    assert "regions=x: one of" in capsys.readouterr().err
    calib = ["--calibration", str(tmp_path / "calib.npz")]
    assert main([*base, "macs=0.7", *calib, "-o", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "prune macs=0.7" in out and "accuracy vs the unpruned model" in out
    assert not (tmp_path / "bad").exists()


def _two_ffn_model() -> onnx.ModelProto:
    """Two FFN blocks with residuals: x -> (MatMul, Relu, MatMul) + x -> (MatMul, Relu,
    MatMul) + r: two regions, the second's inputs moved by the first's pruning."""
    rng = np.random.default_rng(11)
    inits = {
        "w1": rng.standard_normal((D, H)) / 6,
        "w2": rng.standard_normal((H, D)) / 8,
        "w3": rng.standard_normal((D, H)) / 6,
        "w4": rng.standard_normal((H, D)) / 8,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("MatMul", ["ar", "w2"], ["b"]),
        helper.make_node("Add", ["b", "x"], ["r"]),
        helper.make_node("MatMul", ["r", "w3"], ["c"]),
        helper.make_node("Relu", ["c"], ["cr"]),
        helper.make_node("MatMul", ["cr", "w4"], ["d"]),
        helper.make_node("Add", ["d", "r"], ["y"]),
    ]
    return _model(nodes, inits, [1, 16, D], [1, 16, D])


def _ridge(xp: np.ndarray, target: np.ndarray, prior: np.ndarray, damp: float):
    """numpy reference: centered least squares of target on xp, pulled toward prior."""
    xc, yc = xp - xp.mean(0), target - target.mean(0)
    n = len(xp)
    gram = xc.T @ xc / n
    lam = damp * np.mean(np.diag(gram)) + 1e-12
    w = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ yc / n + lam * prior)
    return w, target.mean(0) - xp.mean(0) @ w


def test_sequential_refit_equals_a_numpy_reference():
    from graphopt.compress.channels.sequential import sequential_refit
    from graphopt.target_infra import host_target

    model = _two_ffn_model()
    w = {k: v.astype(np.float64) for k, v in _weights(model).items()}
    mod = _graph(model)
    regions = find_regions(mod)
    assert [(r.producer.name, r.consumer.name) for r in regions] == [
        ("matmul_0", "matmul_1"),
        ("matmul_2", "matmul_3"),
    ]
    rng = np.random.default_rng(12)
    xs = rng.standard_normal((6, 1, 16, D))
    kept = {"matmul_0": np.arange(0, H, 2), "matmul_2": np.arange(H // 2)}
    feeds = [{"x": x.astype(np.float32)} for x in xs]
    run = lambda residual: sequential_refit(  # noqa: E731
        mod, regions, feeds, kept, 0.1, host_target(), lambda _m: None, residual=residual
    )
    got, local = run(True), run(False)
    x = xs.reshape(-1, D)
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    k1, k2 = kept["matmul_0"], kept["matmul_2"]
    # region 1: nothing before it is pruned
    h1 = relu(x @ w["w1"])
    w2, c2 = _ridge(h1[:, k1], h1 @ w["w2"], w["w2"][k1], 0.1)
    # region 2: its inputs in the model with region 1 pruned, toward the dense outputs
    r_dense, r_pruned = h1 @ w["w2"] + x, h1[:, k1] @ w2 + c2 + x
    h2_dense, h2_pruned = relu(r_dense @ w["w3"]), relu(r_pruned @ w["w3"])
    w4, c4 = _ridge(h2_pruned[:, k2], h2_dense @ w["w4"], w["w4"][k2], 0.1)
    # with the residual: region 2 also makes up for the error the residual add carries
    w4r, c4r = _ridge(h2_pruned[:, k2], h2_dense @ w["w4"] + r_dense - r_pruned, w["w4"][k2], 0.1)
    want = {
        "local": {"matmul_0": (w2, c2), "matmul_2": (w4, c4)},
        "residual": {"matmul_0": (w2, c2), "matmul_2": (w4r, c4r)},
    }
    for mode, result in (("local", local), ("residual", got)):
        for name, (wr, cr) in want[mode].items():
            np.testing.assert_array_equal(result[name]["keep"], kept[name])
            np.testing.assert_allclose(result[name]["weight"], wr, rtol=2e-3, atol=2e-4)
            np.testing.assert_allclose(result[name]["bias"], cr, rtol=2e-3, atol=2e-4)
    # and it is not the one-shot fit: region 2 saw region 1's error
    w4_oneshot, _ = _ridge(h2_dense[:, k2], h2_dense @ w["w4"], w["w4"][k2], 0.1)
    assert np.abs(w4_oneshot - local["matmul_2"]["weight"]).max() > 1e-3
    assert np.abs(w4r - w4).max() > 1e-3


def test_few_calibration_rows_give_one_warning():
    from graphopt.compress.channels.method import _warn_small

    regions = find_regions(_graph(_ffn_model()))  # 64 hidden units
    said: list[str] = []
    too_few, few, many = RegionStats(), RegionStats(), RegionStats()
    too_few.add(np.ones((40, H)))  # under one row a channel: one-shot
    few.add(np.ones((100, H)))  # under four: a warning, still sequential
    many.add(np.ones((400, H)))
    assert not _warn_small(regions, {regions[0].name: too_few}, said.append, sequential=True)
    assert len(said) == 1 and said[0].startswith("warning: prune macs: 40 calibration rows")
    assert said[0].endswith("refitting one-shot, not sequentially")
    assert _warn_small(regions, {regions[0].name: few}, said.append, sequential=True)
    assert len(said) == 2 and said[1].endswith("give more, more varied calibration data")
    assert _warn_small(regions, {regions[0].name: many}, said.append)
    assert len(said) == 2


def test_an_explicit_pad_before_a_strided_depthwise_conv_stays_in_the_region(tmp_path):
    """TF-style exports pad asymmetrically with a Pad node; `--prune macs` runs fold-pad
    first, so the expansion channels through that depthwise conv are still one region."""
    rng = np.random.default_rng(8)
    inits = {
        "we": rng.standard_normal((E, C, 1, 1)) / 3,
        "wd": rng.standard_normal((E, 1, 3, 3)) / 3,
        "wp": rng.standard_normal((C, E, 1, 1)) / 7,
        "pads": np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "we"], ["e"]),
        helper.make_node("Relu", ["e"], ["er"]),
        helper.make_node("Pad", ["er", "pads"], ["ep"]),
        helper.make_node("Conv", ["ep", "wd"], ["d"], group=E, strides=[2, 2]),
        helper.make_node("Relu", ["d"], ["dr"]),
        helper.make_node("Conv", ["dr", "wp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])],
        [
            numpy_helper.from_array(v if k == "pads" else v.astype(np.float32), k)
            for k, v in inits.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert find_regions(_graph(model)) == []  # the pad ends the region before fold-pad
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((32, C, 12, 12)).astype(np.float32))
    opts = ChannelOptions(macs=0.8, calibration=str(tmp_path / "c.npz"), multiple=4)
    art = graphopt.compile(tmp_path / "m.onnx", tmp_path / "out", compression=[Channels(opts)])
    (row,) = art.manifest["channels"]["regions"]
    assert row["kept"] < E
    xs = rng.standard_normal((1, C, 12, 12)).astype(np.float32)
    want, got = _ort(model, xs), art.run({"x": xs})["y"]
    assert float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want)) > 0.9
