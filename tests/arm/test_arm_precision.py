"""16-bit precision on ARM: a matmul chain compiled with `--precision fp16|bf16` for a
Raspberry Pi 5 (the fallback kernel: 16-bit weights widened in NEON registers, fp32 FMAs) gives
the x86 build's numbers bit for bit under qemu (same products, same summation order)."""

from __future__ import annotations

import subprocess

import numpy as np
import onnx
import pytest
from aarch64_tools import needs_aarch64_tools
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import bundle
from graphopt.compress.precision.method import Precision, PrecisionOptions

pytestmark = [pytest.mark.arm, pytest.mark.slow, needs_aarch64_tools]
D = 48


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((D, D)) / 7).astype(np.float32) for _ in range(2)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, D])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x86_and_arm(tmp_path, model: onnx.ModelProto, board: str, x86_options=None, **options):
    """`model` compiled with `options` for x86 (`x86_options`) and for `board`: the two
    artifacts, the ARM build's pass counters and the disassembly of its library."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    x86 = graphopt.compile(path, tmp_path / "x86", target_options=x86_options, **options)
    arm = graphopt.compile(
        path, tmp_path / "arm", target="arm", target_options={"board": board}, **options
    )
    stats = {r["pass"]: r["stats"] for r in arm.manifest["report"]["passes"]}
    asm = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(arm.library_path)], capture_output=True, text=True
    ).stdout
    return x86, arm, stats, asm


def _assert_same_numbers(x86, arm, x: np.ndarray, cpu: str) -> None:
    """The ARM bundle under qemu (`cpu`) gives the x86 artifact's output bit for bit."""
    got = bundle.run_emulated(arm.directory, {"x": x}, cpu=cpu)["y"]
    np.testing.assert_array_equal(got, x86.run({"x": x})["y"])


@pytest.mark.parametrize("precision,widen", [("fp16", "fcvtl"), ("bf16", "shll")])
def test_precision_on_rpi5_matches_x86(tmp_path, precision, widen):
    method = [Precision(PrecisionOptions(precision, edges=True))]
    x86, arm, _stats, asm = _x86_and_arm(tmp_path, _chain(), "rpi5", compression=method)
    assert arm.manifest["precision"]["low_layers"] == 2
    assert "computed in fp32 on this target" in arm.manifest["precision"]["note"]
    assert widen in asm
    x = np.random.default_rng(1).standard_normal((3, D)).astype(np.float32)
    _assert_same_numbers(x86, arm, x, "cortex-a76")


def test_depthwise_16bit_on_rpi5_matches_x86(tmp_path):
    """`--precision` keeps ARM's depthwise convs fp32 (unmeasured on a board), but the 16-bit
    depthwise kernel builds for NEON from a pipeline and gives the x86 build's numbers bit
    for bit under qemu (4-lane vectors of channels; bits handed between the layers)."""
    from tests.test_precision_depthwise import _block

    pipe = "O2,lower-precision{precision=bf16,depthwise=true}"
    x86, arm, stats, _asm = _x86_and_arm(tmp_path, _block(), "rpi5", pipeline=pipe)
    assert stats["materialize-precision"]["depthwise"] == 2
    x = np.random.default_rng(1).standard_normal((1, 8, 14, 14)).astype(np.float32)
    _assert_same_numbers(x86, arm, x, "cortex-a76")


def _handoff_pair(rows: int) -> onnx.ModelProto:
    """x @ W0 + b0 read only by the next matmul (stored as bits, read as words), an odd K and
    channel counts that are not whole panels."""
    rng = np.random.default_rng(2)
    inits = {
        "w0": (rng.standard_normal((37, 40)) / 6).astype(np.float32),
        "b0": rng.standard_normal(40).astype(np.float32),
        "w1": (rng.standard_normal((40, 24)) / 6).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Add", ["h", "b0"], ["hb"]),
        helper.make_node("MatMul", ["hb", "w1"], ["z"]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pair",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 37])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 24])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("rows", [1, 13])
@pytest.mark.parametrize(
    "precision,kernel,instructions",
    [("bf16", "bfmlal", ("bfmlalt", "bfmlalb")), ("fp16", "fmlal", ("fmlal\t", "fmlal2"))],
)
def test_widening_multiply_add_on_graviton3_matches_x86(
    tmp_path, precision, kernel, instructions, rows
):
    """A Neoverse-V1 has +bf16 and +fp16fml: the 16-bit matmuls run BFMLALT/B or FMLAL/2
    (no widening instruction) and give the fallback kernel's numbers bit for bit under qemu
    (GEMV and row tiles; odd K; bias folded; bits handed to the second matmul)."""
    method = [Precision(PrecisionOptions(precision, edges=True))]
    x86, arm, stats, asm = _x86_and_arm(
        tmp_path, _handoff_pair(rows), "graviton3", {"mcpu": "znver3"}, compression=method
    )
    assert stats["materialize-precision"][f"kernel_{kernel}"] == 2
    assert "into fp32 on this target" in arm.manifest["precision"]["note"]
    assert all(name in asm for name in instructions)
    x = np.random.default_rng(3).standard_normal((rows, 37)).astype(np.float32)
    _assert_same_numbers(x86, arm, x, "max")


def test_window_conv_16bit_on_graviton3_matches_x86(tmp_path):
    """A 3x3 stem and a strided 1x1 as the 16-bit matmul over their windows (from a pipeline:
    `--precision` keeps ARM's convs fp32): the gather builds for NEON, the matmuls run
    BFMLALT/B, and the numbers equal the x86 build's bit for bit under qemu."""
    from tests.test_precision_window import _stem

    pipe = "O2,lower-precision{precision=bf16,windows=true}"
    x86, arm, stats, _asm = _x86_and_arm(tmp_path, _stem(), "graviton3", pipeline=pipe)
    assert stats["materialize-precision"]["kernel_bfmlal"] == 2
    x = np.random.default_rng(1).standard_normal((1, 3, 20, 20)).astype(np.float32)
    _assert_same_numbers(x86, arm, x, "max")
