"""Generated models compiled at O0 and O2 match onnxruntime; manifests record what was built."""

from __future__ import annotations

import hashlib
import json

import model_builders as mb
import numpy as np
import onnx
import pytest
import tvm

import graphopt
from graphopt.errors import GraphoptError, InputError
from graphopt.frontend import import_onnx
from graphopt.instrument import max_relative_error
from graphopt.pipeline import PRESETS
from graphopt.reference import ort_run, ort_session

TOLERANCE = 1e-4  # max|got - ref| / max(1, max|ref|)
O2_PIPELINE = PRESETS["O2"]
MATCHING_MODELS = [
    "cnn",
    "mobilenet_block",
    "mlp",
    "transformer_block",
    "shape_subgraphs_static_pads",
    "shape_subgraphs",
]


def reference(model_path, feeds) -> dict[str, np.ndarray]:
    """onnxruntime fp32 outputs, keyed by output name."""
    return ort_run(ort_session(model_path), feeds)


def assert_matches_ort(art, model_path, feeds) -> None:
    ref = reference(model_path, feeds)
    got = art.run(feeds)
    assert list(got) == list(ref), "artifact outputs are not the model's outputs, in order"
    err = max_relative_error(list(ref.values()), [got[k] for k in ref])
    assert err <= TOLERANCE, f"max error {err:.3g} relative to output scale"


@pytest.mark.parametrize("opt_level", [0, 2])
@pytest.mark.parametrize("name", MATCHING_MODELS)
def test_matches_onnxruntime(compiled, model_files, name, opt_level):
    art = compiled(name, opt_level)
    for seed in (0, 1):
        assert_matches_ort(art, model_files[name], mb.sample_inputs(art.inputs, seed))


def test_outputs_depend_on_inputs(compiled):
    """Guards the comparison itself: different inputs give different outputs."""
    art = compiled("transformer_block", 2)
    a, b = (art.run(mb.sample_inputs(art.inputs, seed))["y"] for seed in (0, 1))
    assert not np.allclose(a, b)


def test_transformer_mask_is_applied(compiled, model_files):
    """Masking must change attention: zero mask and causal mask give different outputs."""
    art = compiled("transformer_block", 2)
    feeds = mb.sample_inputs(art.inputs)
    open_feeds = {**feeds, "mask": np.zeros_like(feeds["mask"])}
    assert not np.allclose(art.run(feeds)["y"], art.run(open_feeds)["y"])
    assert_matches_ort(art, model_files["transformer_block"], open_feeds)


def test_o2_removes_batchnorm(compiled):
    """O0 runs no graph passes; O2's fold-batchnorm leaves no batch_norm call."""
    o0 = compiled("cnn", 0).manifest["report"]
    o2 = compiled("cnn", 2).manifest["report"]
    assert o0["ops_after_passes"] == o0["ops_after_import"]
    assert o0["ops_after_passes"].get("relax.nn.batch_norm") == 2
    assert "relax.nn.batch_norm" not in o2["ops_after_passes"]
    graph_rows = [row["pass"] for row in o2["passes"] if row["stage"] == "graph"]
    assert graph_rows == O2_PIPELINE.split(",")


@pytest.mark.parametrize("name", ["shape_subgraphs_static_pads", "shape_subgraphs"])
def test_cleanup_folds_shape_subgraphs(model_files, name):
    """The ONNX clean-up folds Shape/Gather/Unsqueeze/Concat/ConstantOfShape to constants."""
    imported = import_onnx(model_files[name])
    left = {n.op_type for n in imported.onnx_model.graph.node} & mb.SHAPE_OPS
    assert not left, f"shape sub-graph ops left after clean-up: {sorted(left)}"
    assert [n.op_type for n in imported.onnx_model.graph.node].count("Pad") == 1


def test_shape_model_needs_cleanup(model_files):
    """Without the clean-up TVM's importer rejects the computed Pad (so the model tests it)."""
    with pytest.raises(GraphoptError, match="importer failed"):
        import_onnx(model_files["shape_subgraphs_static_pads"], cleanup=False)


def test_dynamic_batch_compiles_with_input_shapes(compiled, model_files):
    art = compiled("dynamic_batch", 2, input_shapes={"x": (3, 16)})
    assert [(s.name, s.shape, s.dtype) for s in art.inputs] == [("x", (3, 16), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in art.outputs] == [("y", (3, 4), "float32")]
    feeds = mb.sample_inputs(art.inputs)
    assert art.run(feeds)["y"].shape == (3, 4)
    assert_matches_ort(art, model_files["dynamic_batch"], feeds)
    with pytest.raises(InputError, match="'x'"):
        art.run({"x": np.zeros((1, 16), np.float32)})


@pytest.mark.parametrize("opt_level", [0, 2])
def test_manifest_fields(compiled, model_files, opt_level):
    art = compiled("cnn", opt_level)
    m = art.manifest
    assert json.loads((art.directory / "manifest.json").read_text()) == m
    assert m["format"] == "graphopt-artifact/1"
    assert (art.directory / m["library"]).is_file()
    assert m["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert m["target"]["name"] == "x86"
    assert json.loads(m["target"]["tvm"])["kind"] == "llvm"
    assert m["target"]["options"]["triple"] == "x86_64-linux-gnu"
    assert m["pipeline"] == ("" if opt_level == 0 else O2_PIPELINE)
    assert m["full_pipeline"].startswith(m["pipeline"])
    assert "tvm.LegalizeOps" in m["stages"]["legalize"]
    assert m["versions"]["graphopt"] == graphopt.__version__
    assert m["versions"]["tvm"] == tvm.__version__
    assert m["versions"]["onnx"] == onnx.__version__
    path = model_files["cnn"]
    assert m["source"] == {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_manifest_of_dynamic_model(compiled):
    m = compiled("dynamic_batch", 2, input_shapes={"x": (3, 16)}).manifest
    assert m["inputs"] == [{"name": "x", "shape": [3, 16], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "y", "shape": [3, 4], "dtype": "float32"}]


def test_manifest_of_multi_input_output_model(compiled):
    m = compiled("transformer_block", 0).manifest
    b, s, d, h = (mb.TRANSFORMER[k] for k in ("batch", "seq", "dim", "heads"))
    assert m["inputs"] == [
        {"name": "x", "shape": [b, s, d], "dtype": "float32"},
        {"name": "mask", "shape": [b, 1, s, s], "dtype": "float32"},
    ]
    assert m["outputs"] == [
        {"name": "y", "shape": [b, s, d], "dtype": "float32"},
        {"name": "attn", "shape": [b, h, s, s], "dtype": "float32"},
    ]


def test_causal_mask_zeroes_future_attention(compiled):
    """Attention probabilities above the diagonal vanish under the causal mask."""
    art = compiled("transformer_block", 2)
    attn = art.run(mb.sample_inputs(art.inputs))["attn"]
    upper = np.triu(np.ones(attn.shape[-2:], dtype=bool), k=1)
    assert np.all(attn[..., upper] < 1e-6)
    np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)


def test_compile_from_model_proto(graphopt_compile, tmp_path):
    """A ModelProto has no path; its sha256 is that of its serialized bytes."""
    model = mb.mlp()
    art = graphopt_compile(model, tmp_path / "art", opt_level=0)
    assert art.manifest["source"] == {
        "path": None,
        "sha256": hashlib.sha256(model.SerializeToString()).hexdigest(),
    }


def test_public_compile_is_callable_twice(graphopt_compile, tmp_path):
    """`graphopt.compile` stays the function after a first compile (a submodule of the same
    name would rebind the package attribute on import)."""
    graphopt_compile(mb.mlp(), tmp_path / "first", opt_level=0)
    assert callable(graphopt.compile), "graphopt.compile was rebound"
    art = graphopt.compile(mb.mlp(), tmp_path / "second", opt_level=0)
    assert art.manifest["pipeline"] == ""
