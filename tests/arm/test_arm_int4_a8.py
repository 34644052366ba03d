"""W4A8 on ARM: a lowered int4 matmul through the arm target's stages for a Cortex-A76
(materialize-int4 builds the sdot kernel), run under qemu, equals the numpy model bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from aarch64_tools import needs_aarch64_tools
from tvm import relax
from tvm.relax import op as R

from graphopt import bundle
from graphopt.compress.int4.quant import quantize_rtn
from graphopt.int4_a8_ops import reference_a8_matmul
from graphopt.int4_ops import Int4MatmulSpec
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline
from graphopt.target_infra import make_target

pytestmark = [pytest.mark.arm, needs_aarch64_tools]

K, N = 100, 24


def _module(w: np.ndarray, rows: int) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((rows, K), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(R.matmul(x, relax.const(w)))
        bb.emit_func_output(out)
    return bb.get()


def _bundle(directory, w: np.ndarray, rows: int) -> dict:
    target = make_target("arm", {"board": "rpi5"})
    mod = make_pass("lower-int4", {"symmetric": "false", "act": "int8"})(_module(w, rows)).module
    stats = {}
    with target.tvm_target():
        for names in target.stages().values():
            for p in instantiate(parse_pipeline(",".join(names))):
                result = p(mod)
                mod, stats[p.name] = result.module, result.stats
    executable = tvm.compile(mod, target=target.tvm_target(), relax_pipeline=None)
    directory.mkdir()
    target.export(executable, directory / "model.so")
    manifest = {
        "library": "model.so",
        "inputs": [{"name": "x", "shape": [rows, K], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [rows, N], "dtype": "float32"}],
    }
    target.export_bundle(directory, manifest)
    return stats


# 1: the GEMV path (nibbles decoded at each load); 13: 3 row tiles of 6 over a panel decoded
# once into q - z words
@pytest.mark.parametrize("rows", [1, 13])
def test_sdot_w4a8_matches_numpy_under_qemu(tmp_path, rows):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    stats = _bundle(tmp_path / "w4a8", w, rows)
    assert stats["materialize-int4"]["isa_sdot"] == 1
    x = rng.standard_normal((rows, K)).astype(np.float32)
    got = bundle.run_emulated(tmp_path / "w4a8", {"x": x}, cpu="cortex-a76")["y"]
    q = quantize_rtn(w, 32, False)
    spec = Int4MatmulSpec((rows, K), N, 32, False, act="int8")
    np.testing.assert_array_equal(got, reference_a8_matmul(x, q.packed, q.scales, q.zeros, spec))
