"""`graphopt tune --target cuda` builds candidates on a machine without a GPU: the builder
enters the CUDA target and compiles with nvcc for its arch (MetaSchedule's own builder does
neither), so candidates can be measured on a GPU server over RPC."""

from __future__ import annotations

import tarfile

import pytest
import tvm
from cuda_tools import matmul_kernel, needs_nvcc

from graphopt.targets.cuda import fatbin
from graphopt.targets.cuda.target import Cuda
from graphopt.tuning.tune import _default_schedule, build_without_tensor_intrin

pytestmark = [pytest.mark.cuda, pytest.mark.tuning, needs_nvcc]


def test_default_schedule_is_the_compile_schedule():
    target = Cuda(Cuda.Options(arch="sm_80")).tvm_target()
    scheduled = _default_schedule(matmul_kernel(), target)
    assert scheduled is not None and scheduled.attrs["tirx.is_scheduled"]


def test_metaschedule_builder_makes_a_fatbin_for_the_arch(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    target = Cuda(Cuda.Options(arch="sm_80")).tvm_target()
    kernel = _default_schedule(matmul_kernel(), target).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": kernel})
    builder = ms.builder.LocalBuilder(f_build=build_without_tensor_intrin, max_workers=1)
    (result,) = builder.build([ms.builder.BuilderInput(mod, target)])
    assert result.error_msg is None, result.error_msg
    with tarfile.open(result.artifact_path) as tar:  # LocalBuilder's export: a .tar.gz of objects
        data = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
    assert ("elf", "sm_80") in {(e.kind, e.arch) for e in fatbin.entries(data)}
    assert not fatbin.carries_source(data)
