"""targets/cpu/lowering.py: small thread-private tiles stay on the stack, the rest as TVM does."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from graphopt.target_infra import make_target
from graphopt.targets.cpu import lowering as cpu_lowering


def _row_tile_kernel(cols: int, scope: str) -> tvm.IRModule:
    """b = 2a + 1, each parallel row computed into a `scope` buffer of `cols` floats first."""
    a = te.placeholder((8, cols), "float32", name="a")
    b = te.compute((8, cols), lambda i, j: a[i, j] * 2.0 + 1.0, name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    block = sch.get_sblock("b")
    tile = sch.cache_write(block, 0, scope)
    row, _ = sch.get_loops(block)
    sch.reverse_compute_at(tile, row)
    sch.parallel(row)
    return sch.mod


def _workspace_calls(mod: tvm.IRModule, cols: int, pipeline: str) -> int:
    """Calls to the workspace allocator in the built kernel, which must compute b = 2a + 1."""
    lib = tvm.tirx.build(mod, target="llvm", pipeline=pipeline)
    x = np.random.default_rng(0).standard_normal((8, cols)).astype("float32")
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_allclose(y.numpy(), 2 * x + 1, rtol=1e-6)
    return lib.inspect_source("ll").count("TVMBackendAllocWorkspace")


def test_a_one_kib_local_tile_leaves_the_workspace_pool():
    """256 floats = 1024 bytes: TVM's default sends it to TVMBackendAllocWorkspace."""
    mod = _row_tile_kernel(256, "local")
    assert _workspace_calls(mod, 256, "default") > 0
    assert _workspace_calls(mod, 256, cpu_lowering.tir_pipeline()) == 0


@pytest.mark.parametrize(
    "cols, scope",
    [(2 * cpu_lowering.STACK_SCRATCH_BYTES // 4, "local"), (256, "global")],
    ids=["local-over-the-limit", "global"],
)
def test_large_or_shared_buffers_keep_the_workspace_pool(cols, scope):
    mod = _row_tile_kernel(cols, scope)
    assert _workspace_calls(mod, cols, cpu_lowering.tir_pipeline()) > 0


def test_cpu_targets_lower_with_it():
    assert make_target("x86").tir_pipeline() == cpu_lowering.PIPELINE
    assert cpu_lowering.PIPELINE in tvm.tirx.compilation_pipeline.PIPELINE_MAP
