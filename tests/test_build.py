"""graphopt/build.py, the one build path, and the host target it evaluates on."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from graphopt import build
from graphopt.errors import TargetError
from graphopt.target_infra import host_target, make_target


def _add_one() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.add(x, relax.const(1.0, "float32")))
        bb.emit_func_output(out)
    return bb.get()


def test_evaluate_and_build_runner_compute_the_same():
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    (quick,) = build.evaluate(_add_one(), [x])
    (staged,) = build.build_runner(_add_one(), "x86")([x])
    np.testing.assert_array_equal(quick, x + 1)
    np.testing.assert_array_equal(staged, x + 1)


def test_every_build_uses_the_targets_tir_pipeline(monkeypatch):
    seen = []
    real = tvm.compile

    def spy(mod, target=None, **kw):
        seen.append(kw.get("tir_pipeline"))
        return real(mod, target=target, **kw)

    monkeypatch.setattr(tvm, "compile", spy)
    target = make_target("x86")
    build.evaluate(_add_one(), [np.zeros((4, 8), np.float32)], target)
    build.compile_module(_add_one(), target)
    assert seen == [target.tir_pipeline()] * 2 and seen[0] != "default"


def test_host_target_on_an_aarch64_host_is_a_native_arm_target(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    target = host_target()
    assert target.name == "arm" and target.options.native
    assert target.availability().can_run
    assert str(target.device()) == str(tvm.cpu())
    assert "aarch64" in str(target.tvm_target())


def test_host_target_on_x86():
    if __import__("platform").machine() != "x86_64":
        pytest.skip("x86-64 host only")
    assert host_target().name == "x86"


def test_an_unknown_host_architecture_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "riscv64")
    with pytest.raises(TargetError, match="riscv64"):
        host_target()
