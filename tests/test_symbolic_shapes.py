"""Symbolic input dims (--input-shape ranges): one build runs every size in range.

A small transformer block (symbolic sequence) and a small CNN (symbolic batch, and symbolic
height and width) are compiled once and run at several sizes against onnxruntime; the
manifest records the ranges; sizes outside them, bad range text and --quantize with a range
(int8 in tests/test_int8_symbolic.py) are one-line errors (exit 2 through the CLI).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt.errors import GraphoptError, InputError
from graphopt.frontend import SymDim, import_onnx, parse_shape_arg
from graphopt.inputs import save_npz
from tests import model_builders as mb
from tests.test_cli import run_subprocess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check_sizes(model, art, feeds_at, sizes, atol=1e-4):
    for n in sizes:
        feeds = feeds_at(n)
        want = _ort(model, feeds)
        got = list(art.run(feeds).values())
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)


def _transformer_feeds(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, n, mb.TRANSFORMER["dim"])).astype(np.float32)
    return {"x": x, "mask": mb.causal_mask(seq=n)}


# ---------------------------------------------------------------------------------------------
# Syntax


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x=1,1..512", ("x", (1, SymDim(None, 1, 512)))),
        ("x=1,seq:2..64,8", ("x", (1, SymDim("seq", 2, 64), 8))),
        ("x=1,seq", ("x", (1, SymDim("seq")))),
        ("x=1x3x8", ("x", (1, 3, 8))),
    ],
)
def test_shape_text_with_ranges(text, expected):
    assert parse_shape_arg(text) == expected


@pytest.mark.parametrize(
    "text", ["x=1,5..2", "x=1,0..4", "x=1,a..b", "x=1,seq:", "x=1,1..", "x=1,9seq:1..4"]
)
def test_bad_range_text(text):
    with pytest.raises(InputError) as info:
        parse_shape_arg(text)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Import


def test_range_takes_the_models_dim_name_and_ties_inputs():
    """x's range names the model's `seq`; mask's `seq` dims are the same symbol."""
    imported = import_onnx(mb.transformer_block(seq="seq"), {"x": (1, "1..32", 32)})
    assert imported.dims == {"seq": (1, 32)}
    shapes = {s.name: s.shape for s in imported.inputs}
    assert shapes == {"x": (1, "seq", 32), "mask": (1, 1, "seq", "seq")}
    assert imported.mod["main"].attrs["tir_var_upper_bound"]["seq"] == 32


def test_symbol_without_range_is_an_error():
    with pytest.raises(InputError, match="need a range"):
        import_onnx(mb.transformer_block(seq="seq"), {"x": (1, "seq", 32)})


def test_two_ranges_for_one_symbol_is_an_error():
    shapes = {"x": (1, "seq:1..8", 32), "mask": (1, 1, "seq:1..16", "seq")}
    with pytest.raises(InputError, match="two ranges"):
        import_onnx(mb.transformer_block(seq="seq"), shapes)


def test_range_on_a_static_dim_is_an_error():
    with pytest.raises(InputError, match="dynamic axis"):
        import_onnx(mb.cnn(), {"x": ("1..4", 3, 16, 16)})


def test_a_method_for_static_shapes_only_is_one_line(tmp_path):
    """int8, int4, pruning and 16-bit precision take symbolic dims (tests/test_*_symbolic.py);
    a compression method that does not say it does is refused before any work."""

    class StaticOnly:
        name, requires = "static-only", ()

        def plan(self, mod, ctx):
            raise AssertionError("never planned")

    with pytest.raises(GraphoptError, match="static-only needs static input shapes") as info:
        graphopt.compile(
            mb.cnn(batch="N"),
            tmp_path / "q",
            input_shapes={"x": ("1..4", 3, 16, 16)},
            compression=[StaticOnly()],
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "q").exists()


def test_cuda_with_a_range_is_one_line(tmp_path):
    """Symbolic dims build for x86 and arm (tests/arm/test_arm_symbolic.py), not CUDA."""
    with pytest.raises(GraphoptError, match="x86 and arm targets, not cuda") as info:
        graphopt.compile(
            mb.dynamic_batch(), tmp_path / "c", target="cuda", input_shapes={"x": ("2..6", 16)}
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "c").exists()


def test_tune_with_a_range_is_one_line():
    from graphopt.compiler import CompileOptions
    from graphopt.tuning.tune import kernels_to_tune

    opts = CompileOptions(input_shapes={"x": ("1..4", 16)})
    with pytest.raises(GraphoptError, match="tune needs static input shapes"):
        kernels_to_tune(mb.dynamic_batch(), opts)


# ---------------------------------------------------------------------------------------------
# One build, several sizes, against onnxruntime


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_transformer_any_sequence_length(tmp_path, level):
    model = mb.transformer_block(seq="seq")
    out = tmp_path / f"t{level}"
    art = graphopt.compile(model, out, opt_level=level, input_shapes={"x": (1, "1..40", 32)})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dims"] == {"seq": {"min": 1, "max": 40}}
    assert manifest["inputs"][0]["shape"] == [1, "seq", 32]
    _check_sizes(model, art, _transformer_feeds, [1, 5, 8, 33, 40])


@pytest.mark.parametrize("level", [0, 3])
def test_cnn_any_batch(tmp_path, level):
    model = mb.cnn(batch="N")
    art = graphopt.compile(
        model, tmp_path / f"c{level}", opt_level=level, input_shapes={"x": ("1..8", 3, 16, 16)}
    )
    rng = np.random.default_rng(0)
    feeds = lambda n: {"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}  # noqa: E731
    # 3 twice: run copies new values into its last input tensor; 8, then 1: new tensors
    _check_sizes(model, art, feeds, [1, 3, 3, 8, 1])


def test_cnn_any_image_size(tmp_path):
    model = mb.cnn(size="hw")
    art = graphopt.compile(model, tmp_path / "hw", input_shapes={"x": (1, 3, "8..40", "hw")})
    rng = np.random.default_rng(1)
    feeds = lambda n: {"x": rng.standard_normal((1, 3, n, n)).astype(np.float32)}  # noqa: E731
    _check_sizes(model, art, feeds, [8, 16, 21, 40])


# ---------------------------------------------------------------------------------------------
# The run-time check


@pytest.fixture(scope="module")
def dynamic_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("sym") / "art"
    graphopt.compile(mb.dynamic_batch(), out, input_shapes={"x": ("2..6", 16)})
    return out


def test_out_of_range_is_an_input_error(dynamic_artifact):
    art = graphopt.load(dynamic_artifact)
    assert art.run({"x": np.ones((6, 16), np.float32)})["y"].shape == (6, 4)
    with pytest.raises(InputError, match=r"dim 0 \(N\) is 7, outside the range 2..6"):
        art.run({"x": np.ones((7, 16), np.float32)})
    with pytest.raises(InputError, match="shape"):
        art.run({"x": np.ones((3, 15), np.float32)})


def test_cli_rejects_out_of_range_in_one_line(dynamic_artifact, tmp_path):
    inputs = tmp_path / "in.npz"
    save_npz(inputs, {"x": np.ones((1, 16), np.float32)})
    result = run_subprocess(
        "run", dynamic_artifact, "--inputs", inputs, "--outputs", tmp_path / "out.npz"
    )
    assert result.rc == 2, result.err
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("error:") and "outside the range 2..6" in lines[0]
    )


def test_cli_bad_range_in_one_line(tmp_path):
    model = tmp_path / "m.onnx"
    mb.save(mb.dynamic_batch(), model)
    result = run_subprocess("compile", model, "-o", tmp_path / "o", "--input-shape", "x=9..2,16")
    assert result.rc == 2
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "9..2" in lines[0]
