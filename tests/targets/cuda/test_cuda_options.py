"""The CUDA target's options, stages and one-line errors (no nvcc needed except where said)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphopt.errors import TargetError
from graphopt.target_infra import make_target, registered_targets
from graphopt.targets.cuda import toolchain
from graphopt.targets.cuda.target import ARCHES, GPUS, Cuda


def test_gpu_names_give_the_arch_and_arch_overrides():
    assert Cuda(Cuda.Options(gpu="a100")).arch == "sm_80"
    assert Cuda(Cuda.Options(gpu="t4")).arch == "sm_75"
    assert Cuda(Cuda.Options()).arch == "sm_90"  # h100
    assert Cuda(Cuda.Options(gpu="t4", arch="sm_89")).arch == "sm_89"
    assert all(g.arch in ARCHES for g in GPUS.values())
    assert str(Cuda(Cuda.Options(gpu="l4")).tvm_target().attrs["arch"]) == "sm_89"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"arch": "sm_50"}, "unknown arch 'sm_50'"),
        ({"gpu": "k80"}, "unknown gpu 'k80'"),
        ({"precision": "int4"}, "precision='int4' is not supported"),
    ],
)
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(TargetError) as err:
        Cuda(Cuda.Options(**options))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_stages_follow_the_options(tmp_path):
    plain = Cuda().stages()
    assert "mixed-precision" not in plain["legalize"]
    assert plain["schedule"] == ["materialize-int8-cuda", "schedule-cuda"]
    assert "cuda-graphs" not in plain["lower"]
    half = Cuda(Cuda.Options(precision="fp16", cuda_graphs=True, rules=("matmul", "fallback")))
    stages = half.stages(tmp_path)
    assert stages["legalize"].index("mixed-precision") < stages["legalize"].index("tvm.LegalizeOps")
    assert stages["schedule"][0].startswith("tvm.MetaScheduleApplyDatabase")
    assert stages["schedule"][1:] == [
        "materialize-int8-cuda",
        "schedule-cuda{rules=matmul:fallback}",
    ]
    assert "cuda-graphs" in stages["lower"]
    assert Cuda().device_kind() == "cuda"


def test_registered_with_its_passes():
    from graphopt.pass_infra import registered_passes

    assert "cuda" in registered_targets()
    names = {"schedule-cuda", "mixed-precision", "cuda-graphs", "materialize-int8-cuda"}
    assert names <= set(registered_passes())


def test_missing_nvcc_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError) as err:
        make_target("cuda", {})
    assert "needs nvcc" in str(err.value) and "\n" not in str(err.value)
    assert not Cuda().availability().can_compile


def test_missing_nvcc_cli(tmp_path):
    """`graphopt compile --target cuda` without nvcc: exit 2 and one `error:` line."""
    model = Path(__file__).resolve().parents[3] / "graphopt" / "models" / "digits_cnn.onnx"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": str(bindir)}
    cmd = [str(bindir / "graphopt"), "compile", str(model), "--target", "cuda",
           "-o", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: target 'cuda' needs nvcc")


def test_stub_driver_builds_from_source(monkeypatch, tmp_path):
    """The stub libcuda.so.1 is compiled from the repository's C source into the cache."""
    if not toolchain.shutil.which("gcc"):
        pytest.skip("needs gcc")
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    lib = toolchain.stub_driver()
    assert lib.name == "libcuda.so.1" and tmp_path in lib.parents
    soname = subprocess.run(["objdump", "-p", str(lib)], capture_output=True, text=True).stdout
    assert "SONAME               libcuda.so.1" in soname
    symbols = subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True).stdout
    for name in ("cuModuleLoadData", "cuLaunchKernelEx", "cuGetErrorString"):
        assert f" T {name}" in symbols
    assert toolchain.stub_driver() == lib  # cached


def test_cuda_graphs_capture_static_regions():
    """cuda_graphs=true: RewriteCUDAGraph lifts `main`'s static kernel runs into captures."""
    import model_builders as mb

    from graphopt.build import run_stages
    from graphopt.frontend import import_onnx

    graph = import_onnx(mb.transformer_block()).mod
    for enabled in (True, False):
        mod = run_stages(graph, Cuda(Cuda.Options(cuda_graphs=enabled)))
        captures = [g.name_hint for g in mod.functions if "_cuda_graph_capture" in g.name_hint]
        assert bool(captures) == enabled
