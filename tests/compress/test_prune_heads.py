"""Attention heads as structured-pruning regions: found, removed (the reshapes take the new
head count), equal to onnxruntime on the pruned weights, chosen alongside FFN units."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import graphopt
from graphopt.compress.channels.heads import find_all, find_heads
from graphopt.compress.channels.method import ChannelOptions, Channels
from graphopt.frontend import import_onnx
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.reference import ort_run, ort_session
from graphopt.testing import run_module
from tests.model_builders import TRANSFORMER, causal_mask, transformer_block

NH, DIM = TRANSFORMER["heads"], TRANSFORMER["dim"]
HD = DIM // NH


def _graph(model: onnx.ModelProto):
    return run_passes(import_onnx(model).mod, instantiate(parse_pipeline("O2")))


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((1, TRANSFORMER["seq"], DIM))
    return x.astype(np.float32), causal_mask()


def _linears(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(weight, bias) initializer names of the constant-weight MatMuls, in node order: Q, K,
    V, output projection, FFN in, FFN out."""
    inits = {t.name for t in model.graph.initializer}
    nodes = list(model.graph.node)
    out = []
    for n in nodes:
        if n.op_type == "MatMul" and n.input[1] in inits:
            add = next(a for a in nodes if a.op_type == "Add" and n.output[0] in a.input)
            out.append((n.input[1], next(i for i in add.input if i in inits)))
    return out


def _pruned_onnx(model, keep_heads, w_o, bias) -> onnx.ModelProto:
    """The block with only `keep_heads`: Q/K/V columns and biases sliced, the split reshape's
    head count, the output projection's weight and bias replaced."""
    new = onnx.ModelProto()
    new.CopyFrom(model)
    arrays = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    ch = (np.asarray(keep_heads)[:, None] * HD + np.arange(HD)).ravel()
    lin = _linears(model)
    repl = {}
    for w, b in lin[:3]:
        repl[w], repl[b] = arrays[w][:, ch], arrays[b][ch]
    repl[lin[3][0]], repl[lin[3][1]] = w_o, arrays[lin[3][1]] + bias
    for t in new.graph.initializer:
        if t.name in repl:
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(repl[t.name]), t.name))
        elif t.name.startswith("heads_shape"):
            shape = numpy_helper.to_array(t).copy()
            shape[2] = len(keep_heads)
            t.CopyFrom(numpy_helper.from_array(shape, t.name))
    return new


def test_heads_are_found_only_when_nothing_else_reads_them():
    assert find_heads(_graph(transformer_block())) == []  # `attn` output reads the probs
    regions = find_heads(_graph(transformer_block(attn_output=False)))
    assert len(regions) == 1
    r = regions[0]
    assert (r.heads, r.head_dim, len(r.splits)) == (NH, HD, 3)
    assert [ly.name for ly in r.qkv] == ["matmul_0", "matmul_1", "matmul_2"]
    assert r.consumer.name == "matmul_3"
    names = {x.name for x in find_all(_graph(transformer_block(attn_output=False)))}
    assert names == {r.name, "matmul_4"}  # and the FFN units


def test_removing_heads_equals_onnxruntime_on_the_pruned_weights(tmp_path):
    model = transformer_block(attn_output=False)
    mod = _graph(model)
    region = find_heads(mod)[0]
    keep_heads = np.array([0, 2, 3])
    keep = (keep_heads[:, None] * HD + np.arange(HD)).ravel()
    rng = np.random.default_rng(1)
    w_o = rng.standard_normal((len(keep), DIM)).astype(np.float32) / 4
    bias = rng.standard_normal(DIM).astype(np.float32) / 4
    plan = {f"{region.name}.keep": keep, f"{region.name}.weight": w_o, f"{region.name}.bias": bias}
    np.savez(tmp_path / "p.npz", **plan)
    out = run_passes(mod, [make_pass("prune-channels", {"plan": str(tmp_path / "p.npz")})])
    text = out["main"].script(show_meta=False)
    assert f"R.shape([1, 8, {len(keep_heads)}, {HD}])" in text  # the split's head count
    assert f"R.shape([1, 8, {NH}, {HD}])" not in text
    # the pass leaves its input as it was (the builder's module is the input itself)
    assert f"R.shape([1, 8, {NH}, {HD}])" in mod["main"].script(show_meta=False)
    x, mask = _inputs(2)
    want = ort_run(ort_session(_pruned_onnx(model, keep_heads, w_o, bias).SerializeToString()),
                   {"x": x, "mask": mask})["y"]  # fmt: skip
    np.testing.assert_allclose(run_module(out, [x, mask])[0], want, rtol=1e-4, atol=1e-4)


def test_heads_and_ffn_units_pruned_end_to_end(tmp_path):
    model = transformer_block(attn_output=False)
    onnx.save(model, tmp_path / "m.onnx")
    xs = np.concatenate([_inputs(s)[0] for s in range(48)])
    masks = np.concatenate([causal_mask()] * 48)
    np.savez(tmp_path / "calib.npz", x=xs, mask=masks)
    opts = ChannelOptions(macs=0.7, calibration=str(tmp_path / "calib.npz"), multiple=4)
    art = graphopt.compile(tmp_path / "m.onnx", tmp_path / "out", compression=[Channels(opts)])
    m = art.manifest["channels"]
    assert m["ratio"] <= 0.72
    rows = {r["region"]: r for r in m["regions"]}
    assert set(rows) == {"heads_matmul_0", "matmul_4"}
    assert rows["heads_matmul_0"]["kept"] % HD == 0
    x, mask = _inputs(99)
    want = ort_run(ort_session(model.SerializeToString()), {"x": x, "mask": mask})["y"]
    got = art.run({"x": x, "mask": mask})["y"]
    cos = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.95
