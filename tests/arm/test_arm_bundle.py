"""aarch64 bundles run under qemu-aarch64 and match the x86 build of the same model.

Needs the cross compiler and qemu (`make test-arm` installs them); skipped without them. Times
under the emulator are never measured: these tests check numbers and instruction sets only.
"""

from __future__ import annotations

import json
import re
import subprocess

import model_builders as mb
import numpy as np
import onnx
import pytest
from aarch64_tools import needs_aarch64_tools
from onnx import TensorProto, helper

import graphopt
from graphopt import bundle
from graphopt.cli import main

pytestmark = [
    pytest.mark.arm,
    needs_aarch64_tools,
]

RTOL = 1e-5


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory, model_files):
    """arm_build(name) -> aarch64 bundle of a generated model, compiled once per module."""
    root = tmp_path_factory.mktemp("arm")
    cache: dict[str, graphopt.Artifact] = {}

    def get(name: str) -> graphopt.Artifact:
        if name not in cache:
            cache[name] = graphopt.compile(model_files[name], root / name, target="arm")
        return cache[name]

    return get


def assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype and got[name].shape == ref.shape, name
        np.testing.assert_allclose(got[name], ref, rtol=RTOL, atol=RTOL, err_msg=name)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer_block"])
def test_bundle_matches_x86(name, arm_build, compiled):
    art, x86 = arm_build(name), compiled(name)
    feeds = mb.sample_inputs(x86.inputs, seed=1)
    assert_close(bundle.run_emulated(art.directory, feeds), x86.run(feeds))


def test_bundle_contents_and_manifest(arm_build):
    art = arm_build("mlp")
    files = {p.relative_to(art.directory).as_posix() for p in art.directory.rglob("*")}
    assert {"run", "model.so", "manifest.json", "io.txt", "lib/libtvm_runtime.so"} <= files
    info = art.manifest["bundle"]
    assert info["runtime"]["apache-tvm"] == __import__("tvm").__version__
    glibc = tuple(int(x) for x in info["requires"]["glibc"].split("."))
    assert (2, 17) <= glibc < (3, 0)
    assert "aarch64" in art.manifest["target"]["tvm"]
    asm = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(art.library_path)], capture_output=True, text=True
    ).stdout
    assert re.search(r"fmla\s+v\d+\.4s", asm)  # schedule-cpu vectorized for 128-bit NEON
    elf = (art.directory / "run").read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64


def qemu_run(directory, *args, cpu: str = "max") -> subprocess.CompletedProcess:
    cmd = [bundle.QEMU, "-cpu", cpu, "-L", str(bundle.QEMU_SYSROOT), str(directory / "run")]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True)


def test_runner_reads_npy_and_npz_in_any_order(arm_build, compiled, tmp_path):
    """.npy in and out for one input; npz members matched by name, not by position."""
    art, x86 = arm_build("mlp"), compiled("mlp")
    x = mb.sample_inputs(x86.inputs, seed=2)["x"]
    np.save(tmp_path / "x.npy", x)
    proc = qemu_run(art.directory, art.library_path, tmp_path / "x.npy", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x86.run({"x": x})["probs"], rtol=RTOL)

    tb, tb86 = arm_build("transformer_block"), compiled("transformer_block")
    feeds = mb.sample_inputs(tb86.inputs, seed=3)
    np.savez(tmp_path / "in.npz", mask=feeds["mask"], x=feeds["x"])  # reverse order
    proc = qemu_run(tb.directory, tb.library_path, tmp_path / "in.npz", tmp_path / "out.npz")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "out.npz") as out:
        assert_close(dict(out), tb86.run(feeds))


def test_runner_reports_bad_inputs(arm_build, tmp_path):
    art = arm_build("mlp")
    lib = art.library_path
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 32), np.float64))
    proc = qemu_run(art.directory, lib, tmp_path / "bad.npz", tmp_path / "o.npz")
    assert proc.returncode == 1
    assert (
        "dtype <f8, expected <f4" in proc.stderr
        and "shape [2, 32], expected [4, 32]" in proc.stderr
    )
    np.savez_compressed(tmp_path / "c.npz", x=np.zeros((4, 32), np.float32))
    proc = qemu_run(art.directory, lib, tmp_path / "c.npz", tmp_path / "o.npz")
    assert proc.returncode == 1 and "np.savez_compressed" in proc.stderr
    np.savez(tmp_path / "other.npz", y=np.zeros((4, 32), np.float32))
    proc = qemu_run(art.directory, lib, tmp_path / "other.npz", tmp_path / "o.npz")
    assert proc.returncode == 1 and "missing input 'x'" in proc.stderr
    assert qemu_run(art.directory).returncode == 2  # usage


def test_cli_compile_prints_one_line_for_arm(tmp_path, model_files, capsys):
    out = tmp_path / "cli"
    args = ["compile", str(model_files["mlp"]), "--target", "arm", "--target-opt", "board=rpi4"]
    assert main([*args, "-o", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["options"]["board"] == "rpi4"
    assert "cortex-a72" in manifest["target"]["tvm"]
    assert (out / "run").is_file()


def qdq_conv(seed: int = 0) -> onnx.ModelProto:
    """QDQ-quantized conv + relu (as onnxruntime's quantizer writes it): int8 weights."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-100, 100, (8, 4, 3, 3)).astype(np.int8)
    inits = [
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]),
        helper.make_tensor("z", TensorProto.INT8, [], [0]),
        helper.make_tensor("w", TensorProto.INT8, w.shape, w.flatten().tolist()),
        helper.make_tensor("ws", TensorProto.FLOAT, [], [0.01]),
        helper.make_tensor("os", TensorProto.FLOAT, [], [0.1]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "z"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "os", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "os", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_quantized_model_matches_x86(tmp_path):
    """A QDQ int8 model: same graph passes and stages as x86, same numbers under qemu."""
    model = qdq_conv()
    x86 = graphopt.compile(model, tmp_path / "x86")
    art = graphopt.compile(model, tmp_path / "arm", target="arm")
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    got, want = bundle.run_emulated(art.directory, feeds)["y"], x86.run(feeds)["y"]
    # Values are multiples of the output scale 0.1; a rounding tie may flip one step.
    assert np.abs(got - want).max() <= 0.1 + 1e-6
    assert np.mean(got == want) > 0.99 and np.count_nonzero(want) > 100


def test_cli_run_emulates_a_bundle(arm_build, compiled, tmp_path, capsys):
    art, x86 = arm_build("mlp"), compiled("mlp")
    feeds = mb.sample_inputs(x86.inputs, seed=5)
    np.savez(tmp_path / "in.npz", **feeds)
    args = ["run", str(art.directory), "--inputs", str(tmp_path / "in.npz")]
    assert main([*args, "--outputs", str(tmp_path / "out.npz")]) == 0
    assert "under qemu" in capsys.readouterr().err
    with np.load(tmp_path / "out.npz") as out:
        assert_close(dict(out), x86.run(feeds))


def test_runner_repeat_prints_a_median(arm_build, compiled, tmp_path):
    art = arm_build("mlp")
    np.savez(tmp_path / "in.npz", **mb.sample_inputs(compiled("mlp").inputs))
    proc = qemu_run(
        art.directory, art.library_path, tmp_path / "in.npz", tmp_path / "o.npz", "--repeat", "3"
    )
    assert proc.returncode == 0 and "over 3 runs" in proc.stderr  # the time itself means nothing


def test_bundle_false_writes_library_and_manifest_only(tmp_path, model_files):
    art = graphopt.compile(
        model_files["mlp"], tmp_path / "bare", target="arm", target_options={"bundle": "false"}
    )
    assert sorted(p.name for p in art.directory.iterdir()) == [
        "manifest.json",
        "model.so",
        "tvm.log",
    ]
    assert "bundle" not in art.manifest
    with pytest.raises(bundle.BundleError, match="no runner"):
        bundle.run_emulated(art.directory, {})
