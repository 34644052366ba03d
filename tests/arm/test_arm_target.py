"""The arm target without a toolchain: boards, TVM target, schedules, option and tool errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tvm.target import codegen

from graphopt import bundle
from graphopt.cli import main
from graphopt.errors import TargetError
from graphopt.target_infra import make_target, registered_targets
from graphopt.targets.arm import BOARDS, CC_PACKAGE, Arm
from graphopt.targets.cpu import schedules as rules

needs_cc = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64-linux-gnu-g++ (make test-arm)"
)


def arm(**options) -> Arm:
    """An arm target built without the option parser (no cross compiler needed)."""
    return Arm(Arm.Options(**options))


def features(target: Arm) -> set[str]:
    return set(codegen.llvm_get_cpu_features(target.tvm_target()))


@pytest.mark.parametrize(
    "board, mcpu, dotprod",
    [
        ("generic", None, False),
        ("cortex-a53", "cortex-a53", False),
        ("rpi4", "cortex-a72", False),
        ("rpi5", "cortex-a76", True),
        ("rk3588", "cortex-a76", True),
        ("graviton2", "neoverse-n1", True),
    ],
)
def test_board_sets_cpu_and_features(board, mcpu, dotprod):
    target = arm(board=board)
    tvm_target = target.tvm_target()
    assert str(tvm_target.attrs["mtriple"]) == "aarch64-linux-gnu"
    assert tvm_target.attrs.get("mcpu") == mcpu
    assert "neon" in features(target)
    assert ("dotprod" in features(target)) == dotprod


def test_mattr_and_mcpu_override_the_board():
    assert "dotprod" in features(arm(mattr=("+dotprod",)))
    assert arm(board="rpi4", mcpu="cortex-a76").tvm_target().attrs["mcpu"] == "cortex-a76"
    assert int(arm(board="rpi4", num_cores=2).tvm_target().attrs["num-cores"]) == 2


def test_schedule_cpu_sees_neon():
    """schedule-cpu picks 128-bit vectors (4 fp32 lanes) and 32 registers for every board."""
    for board in ("generic", "rpi4", "rpi5"):
        info = rules.cpu_info(arm(board=board).tvm_target())
        assert (info.lanes, info.registers) == (4, 32)


def test_same_stages_as_x86():
    """ARM reuses x86's legalize/schedule/lower stages, so graph passes and int8 work alike.

    x86 adds legalize passes measured only there (NHWC layout and sink-transposes after it,
    flatten-pointwise); `sparsify` runs on both with the target's own block (its SIMD width)."""
    from graphopt.targets.cpu.pipeline import CPU_LEGALIZE, X86_LEGALIZE

    def name(item: str) -> str:
        return item.split("{")[0]

    x86 = registered_targets()["x86"]().stages()
    x86_only = set(X86_LEGALIZE) - set(CPU_LEGALIZE) - {"sparsify"}
    assert x86_only == {"layout", "sink-transposes", "flatten-pointwise"}
    x86["legalize"] = [p for p in x86["legalize"] if name(p) not in x86_only]
    strip = [p for p in arm().stages()["legalize"] if name(p) != "sparsify"]
    assert strip == [p for p in x86["legalize"] if name(p) != "sparsify"]
    assert {**arm().stages(), "legalize": None} == {**x86, "legalize": None}
    sparsify = [p for p in arm().stages()["legalize"] if name(p) == "sparsify"]
    assert sparsify == [
        "sparsify{block=4,wide_block=8,max_density=0.5,nchw_densities=8:0.6/4:0.5/2:0.3/1:0.2}"
    ]
    assert "sparsify" not in map(name, arm(sparse=False).stages()["legalize"])
    assert "schedule-cpu" not in arm(schedules=False).stages()["schedule"]


def test_every_board_is_known_to_llvm():
    for name, board in BOARDS.items():
        if board.mcpu:
            assert "neon" in features(arm(board=name)), name


def test_unknown_board_is_an_error():
    with pytest.raises(TargetError, match="unknown board 'rpi9'.*rpi4"):
        make_target("arm", {"board": "rpi9"})


def test_unknown_option_is_a_cli_error(capsys, tmp_path):
    rc = main(["compile", "m.onnx", "--target", "arm", "--target-opt", "bogus=1", "-o", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and "no option bogus" in err and "Traceback" not in err


def test_missing_cross_compiler_names_the_package(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    out = tmp_path / "out"
    rc = main(["compile", "m.onnx", "--target", "arm", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "aarch64-linux-gnu-g++" in err and CC_PACKAGE in err
    assert not out.exists()


def test_given_cross_compiler_missing(capsys, tmp_path):
    rc = main(["compile", "m.onnx", "--target", "arm", "--target-opt", "cc=/nope/g++", "-o", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and "/nope/g++" in err and "Traceback" not in err


def test_targets_lists_arm(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "| arm " in out and "rpi4" in out


def test_io_spec_text():
    manifest = {
        "inputs": [{"name": "input ids", "shape": [1, 8], "dtype": "int64"}],
        "outputs": [
            {"name": "y", "shape": [], "dtype": "float32"},
            {"name": "m", "shape": [2], "dtype": "bool"},
        ],
    }
    assert bundle.io_spec_text(manifest).splitlines() == [
        "device cpu",
        "input <i8 2 1 8 input ids",
        "output <f4 0 y",
        "output |b1 1 2 m",
    ]


def test_required_versions_from_bytes(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\0GLIBC_2.17\0GLIBC_2.34\0GLIBCXX_3.4.9\0GLIBCXX_3.4.29\0GLIBC_2.4\0")
    assert bundle.required_versions([lib], objdump=None) == {"glibc": "2.34", "glibcxx": "3.4.29"}


def test_runner_source_ships_with_the_package():
    sources = bundle.runner_source()
    assert b"vm_load_executable" in sources["run.cc"] and b"ReadNpz" in sources["npy.h"]
    assert np.dtype("float32").str == "<f4"  # io.txt's dtype strings are numpy's


def test_runtime_download_failure_is_one_line(tmp_path, monkeypatch):
    """No cached wheels and no index: a BundleError saying where to put the wheels."""
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(bundle.BundleError, match="put both wheels in .*wheels"):
        bundle.fetch_runtime()
    assert not (tmp_path / "runtime").exists()


@needs_cc
def test_failed_bundle_leaves_no_output(tmp_path, monkeypatch, capsys):
    """The bundle is part of the atomic artifact: if it fails, nothing is written."""
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    out = tmp_path / "out"
    rc = main(["compile", "graphopt/models/digits_cnn.onnx", "--target", "arm", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "TVM runtime wheels" in err and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_io_spec_names_the_manifests_device():
    manifest = {"target": {"device": "cuda"}, "inputs": [], "outputs": []}
    assert bundle.io_spec_text(manifest).splitlines() == ["device cuda"]
