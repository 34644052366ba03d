"""precision=bf16: the option's arch check, the mixed-precision pass's numbers (run on the CPU)
and, compiled for sm_90, bf16 tensor-core instructions in the library's PTX."""

from __future__ import annotations

import pytest
from cuda_tools import needs_nvcc
from tvm import relax

import graphopt
from graphopt.errors import TargetError
from graphopt.frontend import import_onnx
from graphopt.targets.cuda import fatbin
from graphopt.targets.cuda.passes.mixed_precision import MixedPrecision
from graphopt.targets.cuda.target import Cuda
from graphopt.testing import check_numerics


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
@pytest.mark.slow  # imports TVM's tensor intrinsics (about 45 s on an idle core)
def test_bf16_matmul_runs_on_tensor_cores(tmp_path):
    from test_cuda_compile import _big_matmul

    art = graphopt.compile(
        _big_matmul(tmp_path / "mm.onnx"),
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
