"""Compile-only checks of the CUDA target for sm_90: no GPU, but nvcc and gcc.

The library must hold sm_90 machine code and PTX (never CUDA source), the heavy kernels must
be scheduled by a real rule (no conv, matmul, depthwise conv, softmax or layer norm on dlight's
Fallback), and fp16 matmuls large enough for tensor cores must use mma instructions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cuda_tools import big_matmul, needs_nvcc
from tvm import relax

import graphopt
from graphopt.targets.cuda import fatbin

pytestmark = [pytest.mark.cuda, needs_nvcc]


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory, model_files):
    """cuda_build(name, precision, opt_level) -> (artifact, schedule-cuda stats), compiled once
    (the artifact's `pass_stats` holds every pass's stats)."""
    root = tmp_path_factory.mktemp("cuda")
    cache: dict[tuple, tuple] = {}

    def get(name: str, precision: str = "fp32", path=None, opt_level: int = 2):
        key = (name, precision, opt_level)
        if key not in cache:
            art = graphopt.compile(
                path or model_files[name],
                root / f"{name}-{precision}-O{opt_level}",
                target="cuda",
                opt_level=opt_level,
                target_options={"arch": "sm_90", "precision": precision},
            )
            rows = json.loads((art.directory / "manifest.json").read_text())["report"]["passes"]
            art.pass_stats = {r["pass"].split("{")[0]: r["stats"] for r in rows}
            stats = next(r["stats"] for r in rows if r["pass"].startswith("schedule-cuda"))
            cache[key] = (art, stats)
        return cache[key]

    return get


MODELS = ["mobilenet_block", "transformer_block"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_library_holds_sm90_machine_code_and_ptx(cuda_build, name, precision):
    art, _ = cuda_build(name, precision)
    data = art.library_path.read_bytes()
    entries = fatbin.entries(data)
    assert {(e.kind, e.arch) for e in entries} >= {("elf", "sm_90"), ("ptx", "sm_90")}
    assert not fatbin.carries_source(data)
    assert ".target sm_90" in fatbin.ptx_text(art.library_path)
    assert art.manifest["target"]["device"] == "cuda"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_no_kernel_falls_to_the_fallback_rule(cuda_build, name, precision):
    _, stats = cuda_build(name, precision)
    assert stats["scheduled_fallback"] == 0
    assert stats["untouched"] == 0
    if name == "mobilenet_block":
        assert stats["scheduled_window"] >= 1  # the depthwise conv
    else:
        # QK^T, softmax, PV and the head split / merge transposes: one attention kernel
        assert stats["scheduled_attention"] == 1 and stats["scheduled_layer-norm"] >= 1
        assert stats["scheduled_softmax"] == 0 and stats["scheduled_elementwise"] == 0
        assert stats["scheduled_general-reduction"] == 0


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_o3_groups_are_converted_to_16_bits(model_files, precision):
    """-O3's graph-level `fuse` groups are inlined back before mixed-precision, which does not
    look inside them: every matmul of the block takes 16-bit inputs, as at -O2."""
    from graphopt.frontend import import_onnx
    from graphopt.pipeline import instantiate, parse_pipeline, run_passes
    from graphopt.targets.cuda.pipeline import HALF_PASSES, legalize_stage

    mod = run_passes(
        import_onnx(model_files["transformer_block"]).mod, instantiate(parse_pipeline("O3"))
    )
    stage = legalize_stage(precision)
    upto = stage[: stage.index(HALF_PASSES[precision]) + 1]
    mod = run_passes(mod, instantiate(parse_pipeline(",".join(upto))), stage="legalize")
    dtypes = [str(call.args[0].ty.dtype) for call in _calls(mod["main"], "relax.matmul")]
    assert len(dtypes) >= 4 and set(dtypes) == {"float16" if precision == "fp16" else "bfloat16"}


def _calls(func, name: str) -> list:
    found: list = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == name:
            found.append(expr)

    relax.analysis.post_order_visit(func.body, visit)
    return found


def test_attention_and_layer_norm_reduce_with_warp_shuffles(cuda_build):
    art, _ = cuda_build("transformer_block", "fp32")
    assert "shfl.sync" in fatbin.ptx_text(art.library_path)


# slow: the first tensor-core schedule in a process imports tvm.s_tir.tensor_intrin (about
# 170 s on an idle 2-core machine); `make test-cuda-tensorcore` (in CI) and `make test-slow`.
@pytest.mark.slow
@pytest.mark.tensorcore
def test_fp16_matmul_runs_on_tensor_cores(cuda_build, tmp_path):
    art, stats = cuda_build("big_matmul", "fp16", path=big_matmul(tmp_path / "mm.onnx"))
    assert stats["scheduled_matmul-tensorcore"] == 1
    ptx = fatbin.ptx_text(art.library_path)
    assert "mma.sync.aligned" in ptx or "wmma.mma.sync" in ptx


def test_fp32_matmul_stays_off_tensor_cores(cuda_build, tmp_path):
    art, stats = cuda_build("big_matmul", "fp32", path=big_matmul(tmp_path / "mm.onnx"))
    assert stats["scheduled_matmul"] == 1 and stats["scheduled_matmul-tensorcore"] == 0
    assert "mma.sync" not in fatbin.ptx_text(art.library_path)


def test_bundle_runs_without_python_up_to_the_gpu(cuda_build, tmp_path):
    """The bundle: runner, TVM runtime with its CUDA part, the CUDA runtime, io.txt, no
    compiler library. Here (stub driver, no GPU) the runner loads the model, fatbin included,
    and stops at the first CUDA call with the CUDA runtime's own error."""
    import subprocess

    from graphopt.targets.cuda import toolchain

    art, _ = cuda_build("mobilenet_block", "fp32")
    names = {p.name for p in (art.directory / "lib").iterdir()}
    assert {"libtvm_runtime.so", "libtvm_ffi.so", "libtvm_runtime_cuda.so"} <= names
    assert not any("compiler" in n for n in names)
    assert (art.directory / "io.txt").read_text().startswith("device cuda\n")
    size = sum(p.stat().st_size for p in art.directory.rglob("*") if p.is_file())
    assert size < 16 * 2**20
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 8, 12, 12), np.float32))
    env = {"LD_LIBRARY_PATH": str(toolchain.stub_driver().parent), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        ["./run", "model.so", str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        cwd=art.directory, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "CUDA Runtime Error" in proc.stderr, proc.stderr  # past loading, at cudaMalloc


def test_run_and_bench_without_a_gpu_are_one_line_errors(cuda_build, tmp_path, capsys):
    from graphopt.cli import main
    from graphopt.targets.cuda.target import Cuda

    if Cuda().availability().can_run:
        pytest.skip("this machine has a GPU")
    art, _ = cuda_build("mobilenet_block", "fp32")
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 8, 12, 12), np.float32))
    run = ["run", str(art.directory), "--inputs", str(tmp_path / "in.npz"), "--outputs",
           str(tmp_path / "out.npz")]  # fmt: skip
    for argv in (run, ["bench", str(art.directory), "--vs", str(tmp_path / "m.onnx")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "runs on device 'cuda', which this machine lacks" in err[0]
