"""precision=bf16: the option's arch check, the mixed-precision pass's numbers (run on the CPU)
and, compiled for sm_90, bf16 tensor-core instructions in the library's PTX."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_tools import big_matmul, needs_nvcc
from tvm import relax

import graphopt
from graphopt.errors import TargetError
from graphopt.frontend import import_onnx
from graphopt.targets.cuda import fatbin
from graphopt.targets.cuda.passes.mixed_precision import MixedPrecision
from graphopt.targets.cuda.target import Cuda
from graphopt.testing import check_numerics, constant_types, run_module


def test_bf16_needs_ampere_or_newer():
    with pytest.raises(TargetError) as err:
        Cuda(Cuda.Options(gpu="t4", precision="bf16"))
    assert "precision=bf16 needs sm_80 or newer" in str(err.value)
    assert "\n" not in str(err.value)
    assert Cuda(Cuda.Options(gpu="a100", precision="bf16")).arch == "sm_80"
    legalize = Cuda(Cuda.Options(precision="bf16")).stages()["legalize"]
    assert "mixed-precision{dtype=bfloat16}" in legalize


@pytest.mark.parametrize("name", ["mobilenet_block", "transformer_block"])
def test_bf16_mixed_precision_keeps_the_numbers(model_files, name):
    """bf16 weights and activations, fp32 accumulation: within bf16's rounding (8 bits of
    mantissa) of fp32, and every 16-bit tensor is bf16 (no fp16 left)."""
    mod = relax.transform.FoldConstant()(import_onnx(model_files[name]).mod)  # as -O2 does
    result = check_numerics(MixedPrecision(MixedPrecision.Options(dtype="bfloat16")), mod, 3e-2)
    assert result.stats["bf16_retyped"] > 0
    text = result.module.script()
    assert '"bfloat16"' in text and '"float16"' not in text


@pytest.mark.cuda
@needs_nvcc
@pytest.mark.tensorcore
@pytest.mark.slow  # imports TVM's tensor intrinsics (about 45 s on an idle core)
def test_bf16_matmul_runs_on_tensor_cores(tmp_path):
    art = graphopt.compile(
        big_matmul(tmp_path / "mm.onnx"),
        tmp_path / "out",
        target="cuda",
        target_options={"arch": "sm_90", "precision": "bf16"},
    )
    entries = fatbin.entries(art.library_path.read_bytes())
    assert {(e.kind, e.arch) for e in entries} >= {("elf", "sm_90"), ("ptx", "sm_90")}
    rows = art.manifest["report"]["passes"]
    stats = next(r["stats"] for r in rows if r["pass"].startswith("schedule-cuda"))
    assert stats["scheduled_matmul-bf16"] == 1
    ptx = fatbin.ptx_text(art.library_path)
    assert "wmma.mma.sync.aligned.row.col.m16n16k16.f32.bf16.bf16.f32" in ptx


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_embedding_tables_are_stored_in_16_bits(dtype):
    """ToMixedPrecision leaves gathers in fp32: the pass gathers from a 16-bit table instead,
    so a large embedding constant halves and the rows it takes keep their values closely."""
    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.5, (4096, 32)).astype("float32")
    ids = relax.Var("ids", relax.TensorType((1, 8), "int64"))
    bb = relax.BlockBuilder()
    with bb.function("main", [ids]):
        with bb.dataflow():
            rows = bb.emit(relax.op.take(relax.const(table), ids, axis=0))
            out = bb.emit_output(relax.op.matmul(rows, relax.const(np.eye(32, dtype="float32"))))
        bb.emit_func_output(out)
    mod = bb.get()
    result = MixedPrecision(MixedPrecision.Options(dtype=dtype))(mod)
    assert result.stats["tables_halved"] == 1
    folded = relax.transform.FoldConstant()(result.module)
    assert (dtype, (4096, 32)) in constant_types(folded)
    picked = np.array([[0, 5, 4095, 17, 17, 3, 2048, 1]], "int64")
    want, got = run_module(mod, [picked])[0], run_module(result.module, [picked])[0]
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
