"""prune: zeros written into the weight constants of matmuls and 1x1 convs, by magnitude
here or from a weights file; depthwise and KxK convs untouched."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt import _tvm
from graphopt.compress.prune.masks import magnitude
from graphopt.compress.prune.spec import PruneSpec
from graphopt.compress.prune.store import save_pruned
from graphopt.errors import PipelineError
from graphopt.pass_infra import make_pass
from graphopt.testing import apply_checked, check_no_change, run_module

K, N = 32, 48


def _module(w: np.ndarray, conv3: np.ndarray | None = None) -> tvm.IRModule:
    """main(x) = x @ w (+ a 3x3 conv of a reshaped x, which stays dense)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, w.shape[0]), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.matmul(x, relax.const(w)))
            if conv3 is not None:
                img = bb.emit(R.reshape(y, (2, 3, 4, 4)))
                y = bb.emit(R.nn.conv2d(img, relax.const(conv3), padding=1))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _weights(mod: tvm.IRModule) -> list[np.ndarray]:
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and len(e.args) > 1 and _tvm.is_constant(e.args[1]):
            found.append(_tvm.constant_value(e.args[1]))

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


@pytest.mark.parametrize(
    "opts, spec",
    [
        ({"sparsity": "0.5"}, PruneSpec("unstructured", 0.5)),
        ({"pattern": "nm", "n": "2", "m": "4"}, PruneSpec("nm", 0.5, 2, 4)),
        ({"pattern": "block", "sparsity": "0.7", "block": "16"}, PruneSpec("block", 0.7)),
    ],
)
def test_magnitude_in_the_pass(opts, spec):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    conv3 = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    mod = _module(w, conv3)
    result = apply_checked(make_pass("prune", opts), mod)
    assert result.modified and result.stats["layers_pruned"] == 1
    got = _weights(result.module)
    np.testing.assert_array_equal(got[0], magnitude(w, spec))
    np.testing.assert_array_equal(got[1], conv3)  # the 3x3 conv is not pruned
    x = rng.standard_normal((2, K)).astype(np.float32)
    out = run_module(result.module, [x])[0]
    dense_out = run_module(mod, [x])[0]
    assert np.abs(out - dense_out).max() > 1e-3
    ref_mod = _module(magnitude(w, spec), conv3)
    np.testing.assert_allclose(out, run_module(ref_mod, [x])[0], rtol=1e-6, atol=1e-6)


def test_weights_file_and_skip(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((K, N)).astype(np.float32)
    chosen = w * (rng.random(w.shape) > 0.6)
    save_pruned(tmp_path / "p.npz", {"matmul_0": chosen})
    result = apply_checked(make_pass("prune", {"weights": str(tmp_path / "p.npz")}), _module(w))
    np.testing.assert_array_equal(_weights(result.module)[0], chosen)
    check_no_change(make_pass("prune", {"skip": "matmul_0"}), _module(w))
    save_pruned(tmp_path / "bad.npz", {"matmul_0": chosen[:8]})
    with pytest.raises(PipelineError, match="does not match"):
        make_pass("prune", {"weights": str(tmp_path / "bad.npz")}).run(_module(w))
    with pytest.raises(PipelineError, match="cannot read"):
        make_pass("prune", {"weights": str(tmp_path / "missing.npz")}).run(_module(w))


def test_nm_needs_whole_groups():
    """K = 30 is no multiple of 4: a 2:4 pass leaves the layer as it is."""
    w = np.random.default_rng(2).standard_normal((30, 8)).astype(np.float32)
    check_no_change(make_pass("prune", {"pattern": "nm"}), _module(w))


@pytest.mark.parametrize(
    "opts", [{"pattern": "rows"}, {"sparsity": "1.5"}, {"pattern": "nm", "n": "4", "m": "2"}]
)
def test_bad_options(opts):
    w = np.ones((K, N), np.float32)
    with pytest.raises(PipelineError):
        make_pass("prune", opts).run(_module(w))
