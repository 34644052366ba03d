"""Block distillation of pruned regions (graphopt/compress/channels/blocknet.py, distill.py):
the gradients against finite differences, the rewrite computing what the trained block
computes, and the method end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import cli
from graphopt.compress.channels.blocknet import BlockNet, erf
from graphopt.compress.channels.chains import Operands, find_regions, taps, window_rows
from graphopt.compress.channels.distill import _apply, probe_inputs
from graphopt.compress.channels.method import ChannelOptions, Channels, format_report
from graphopt.compress.channels.sequential import probe_for
from graphopt.compress.common.layers import bound_constants, find_layers
from graphopt.compress.prune.layers import as_kn
from graphopt.pass_infra import make_pass
from graphopt.pipeline import run_passes
from graphopt.target_infra import host_target
from graphopt.testing import run_module
from tests.compress.test_prune_channels import _conv_model, _ffn_model, _graph, _ort

MODELS = {"ffn": _ffn_model, "conv": _conv_model}


def _net(mod, seed: int) -> BlockNet:
    """The model's one region on every other channel, its parameters moved off the dense
    values (shifts nonzero), so that each takes part in the checks."""
    func = mod["main"]
    region = find_regions(mod)[0]
    keep = np.arange(0, region.channels, 2)
    layers = {ly.var: ly for ly in find_layers(func)}
    w_q = as_kn(region.consumer)[window_rows(keep, taps(region.consumer))]
    net = BlockNet(region, Operands(mod, bound_constants(func)), layers, keep, w_q, 0 * w_q[0])
    rng = np.random.default_rng(seed)
    for v in net.params.values():
        v += (0.2 * rng.standard_normal(v.shape) * max(float(np.abs(v).max()), 0.1)).astype(v.dtype)
    return net


def rewrite_trained(mod, net: BlockNet, tmp_path):
    """(the block's parameters as a plan, the model prune-channels makes of that plan)."""
    decision = _apply(net, net.region, {"keep": net.keep})
    plan = {f"{net.region.name}.{k}": v for k, v in decision.items()}
    np.savez(tmp_path / "p.npz", **plan)
    out = run_passes(mod, [make_pass("prune-channels", {"plan": str(tmp_path / "p.npz")})])
    return decision, out


def _x(mod, net: BlockNet, rng) -> np.ndarray:
    k = net.params["p.w"].shape[0]
    return rng.standard_normal((2, 6, 6, k) if net.region.axis == 1 else (1, 16, k))


def test_erf_matches_math_erf():
    from math import erf as exact

    x = np.linspace(-4, 4, 801)
    np.testing.assert_allclose(erf(x), [exact(v) for v in x], atol=2e-7)


@pytest.mark.parametrize("name", [*MODELS, "window"])
def test_gradients_match_finite_differences(name):
    """ "window": a strided 3x3 consumer with asymmetric padding (its rows are windows)."""
    from tests.compress.test_prune_window_consumer import reduce_model

    mod = _graph(MODELS[name]() if name in MODELS else reduce_model())
    net = _net(mod, 1)
    net.params = {k: v.astype(np.float64) for k, v in net.params.items()}
    rng = np.random.default_rng(2)
    x = _x(mod, net, rng)
    y, cache = net.forward(x)
    t = rng.standard_normal(y.shape)
    grads = net.backward(cache, 2 * (y - t))
    assert set(grads) == set(net.params)
    for key, value in net.params.items():
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in value.shape)
            old, eps = value[idx], 1e-6
            value[idx] = old + eps
            up = np.sum((net.forward(x)[0] - t) ** 2)
            value[idx] = old - eps
            down = np.sum((net.forward(x)[0] - t) ** 2)
            value[idx] = old
            numeric = (up - down) / (2 * eps)
            assert abs(grads[key][idx] - numeric) <= 1e-4 * max(1.0, abs(numeric)), key


@pytest.mark.parametrize("name", list(MODELS))
def test_rewrite_computes_the_trained_block(name, tmp_path):
    """prune-channels with a distilled plan computes the block's forward, then the rest of
    the graph (the consumer's own bias and the residual add)."""
    model = MODELS[name]()
    mod = _graph(model)
    net = _net(mod, 3)
    region = net.region
    decision, out = rewrite_trained(mod, net, tmp_path)
    assert "R.subtract" not in out.script()  # the shifts went into the bias adds after them
    rng = np.random.default_rng(4)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    if name == "ffn":
        x = rng.standard_normal((1, 16, 32)).astype(np.float32)
        want = net.forward(x)[0].reshape(1, 16, -1) + inits["b2"] + x
    else:
        x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
        rows = net.forward(x.transpose(0, 2, 3, 1))[0]
        want = rows.reshape(1, 12, 12, -1).transpose(0, 3, 1, 2) + inits["bp"][:, None, None] + x
    np.testing.assert_allclose(run_module(out, [x])[0], want, rtol=1e-4, atol=1e-4)
    # the probe that distillation runs computes the same model from whole-layer inputs
    layers = {ly.name: ly for ly in find_layers(mod["main"])}
    dws = [ly.name for ly in layers.values() if ly.var in region.bindings]
    probe = probe_for(mod, [region], host_target(), more=[region.producer.name, *dws])
    weights, shifts = probe_inputs([region], {region.name: decision}, layers)
    got = probe.runner.run([x], weights, shifts)[-1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_method_distills_and_the_artifact_follows_the_model(tmp_path):
    model = _conv_model()
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(6).standard_normal([32, 8, 12, 12]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    opts = ChannelOptions(macs=0.7, calibration=str(tmp_path / "calib.npz"), multiple=4)
    method = Channels(ChannelOptions(**{**opts.__dict__, "distill": 60}))
    art = graphopt.compile(tmp_path / "m.onnx", tmp_path / "out", compression=[method])
    m = art.manifest["channels"]
    assert m["distill"]["steps"] == 60
    (gain,) = m["distill"]["held_out_gain"].values()
    assert gain >= 1.0  # the held-out error never ends above the refit's
    assert "block distillation: 60 steps a region, 1 regions" in format_report(m)
    xs = np.random.default_rng(7).standard_normal([1, 8, 12, 12]).astype(np.float32)
    want, got = _ort(model, xs), art.run({"x": xs})["y"]
    assert float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want)) > 0.95


def test_cli_rejects_a_bad_distill_setting(tmp_path, capsys):
    onnx.save(_conv_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 8, 12, 12), np.float32))
    argv = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out")]
    argv += ["--prune", "macs=0.8,distill=lots", "--calibration", str(tmp_path / "c.npz")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --prune macs: distill=lots: a number of steps"]
    assert not (tmp_path / "out").exists()
