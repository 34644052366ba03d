"""graphopt's own GPU rules compute what the unscheduled kernel computes, checked on the CPU.

No GPU here, but with their thread loops turned back into serial loops graphopt's schedules
run on the CPU and must give the unscheduled kernel's numbers: `window` and `elementwise` use
no cooperation between threads; the `softmax` and `layer-norm` rows reduce across the lanes of
a warp, which as a serial loop is the same reduction in another order. Also: the rules take
the kernels they are meant for (a depthwise conv, pooling, a transpose, softmax, layer norm)
and leave matmuls and plain reductions to dlight.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from cuda_tools import matmul_kernel, serial
from tvm import relax, tirx
from tvm.script import relax as R

from graphopt import _tvm
from graphopt.targets.cuda.schedules import rules
from graphopt.targets.cuda.target import Cuda
from graphopt.testing import single_input_module

LLVM = _tvm.make_target({"kind": "llvm"})


def _kernels(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    cuda = Cuda()
    with cuda.tvm_target():
        legal = relax.transform.FuseTIR()(
            relax.transform.FuseOps()(
                relax.transform.AnnotateTIROpPattern()(relax.transform.LegalizeOps()(mod))
            )
        )
    return {g.name_hint: f for g, f in legal.functions.items() if isinstance(f, tirx.PrimFunc)}


def _run(func: tirx.PrimFunc, arrays: list[np.ndarray]) -> np.ndarray:
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), target=LLVM)
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _check(func: tirx.PrimFunc, expected_rule: str) -> None:
    with Cuda().tvm_target() as target:
        outcome = rules.schedule_func(func, target)
    assert outcome.rule == expected_rule, outcome.errors
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal([int(d) for d in p.ty.shape]).astype(str(p.ty.dtype))
        for p in func.params
    ]
    arrays[-1][...] = 0
    want = _run(func, [a.copy() for a in arrays])
    got = _run(serial(outcome.func.without_attr("tirx.is_scheduled")), arrays)
    tol = 1e-5 if want.dtype == np.float32 else 2e-3
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _module(build):
    x = relax.Var("x", relax.TensorType((1, 16, 14, 14), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(x))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize(
    ("name", "build", "rule"),
    [
        (
            "depthwise",
            lambda x: R.clip(
                relax.op.nn.conv2d(
                    x, relax.const(np.ones((16, 1, 3, 3), "float32") / 9), padding=1, groups=16
                ),
                0,
                6,
            ),
            "window",
        ),
        (
            "depthwise_stride2",
            lambda x: relax.op.nn.conv2d(
                x, relax.const(np.ones((16, 1, 3, 3), "float32")), strides=2, padding=1, groups=16
            ),
            "window",
        ),
        ("max_pool", lambda x: relax.op.nn.max_pool2d(x, (3, 3), (2, 2), (1, 1)), "window"),
        ("transpose", lambda x: relax.op.permute_dims(x, [0, 2, 3, 1]), "elementwise"),
        ("sigmoid_mul", lambda x: relax.op.multiply(x, relax.op.sigmoid(x)), "elementwise"),
        ("half_cast", lambda x: relax.op.astype(x, "float16"), "elementwise"),
    ],
)
def test_own_rules_match_the_unscheduled_kernel(name, build, rule):
    kernels = _kernels(_module(build))
    assert len(kernels) == 1, sorted(kernels)
    _check(next(iter(kernels.values())), rule)


def _softmax(bb, x):
    return relax.op.nn.softmax(x, axis=-1)


def _layer_norm(d: int, dtype: str = "float32"):
    gamma = relax.const(np.linspace(0.5, 1.5, d).astype(dtype))
    beta = relax.const(np.linspace(-1, 1, d).astype(dtype))
    if dtype == "float32":
        return lambda bb, x: relax.op.nn.layer_norm(x, gamma, beta, axes=[-1])
    return lambda bb, x: relax.op.nn.layer_norm(
        bb.emit(relax.op.astype(x, dtype)), gamma, beta, axes=[-1]
    )


@pytest.mark.parametrize(
    ("shape", "build", "rule"),
    [
        ((2, 4, 16, 128), _softmax, "softmax"),  # attention rows: one warp each
        ((3, 5, 8), _softmax, "softmax"),  # short rows, a row count no block size divides
        ((4, 2048), _softmax, "softmax"),  # long rows: a block per row
        ((1, 12, 384), _layer_norm(384), "layer-norm"),  # MiniLM's hidden size
        ((2, 7, 96), _layer_norm(96, "float16"), "layer-norm"),  # fp16, cast fused in
    ],
)
def test_row_rules_match_the_unscheduled_kernel(shape, build, rule):
    """Softmax and layer norm rows: warp (or block) reductions give the kernel's numbers."""
    kernels = _kernels(single_input_module(shape, build))
    _check(kernels[rule.replace("-", "_")], rule)


def test_row_rules_leave_single_reductions_to_dlight():
    """A mean (one reduction) is not a softmax or layer norm."""
    build = lambda bb, x: relax.op.mean(x, axis=[-1])  # noqa: E731
    func = next(iter(_kernels(single_input_module((4, 64), build)).values()))
    with Cuda().tvm_target() as target:
        assert rules.schedule_func(func, target).rule == "reduction"


def test_matmul_is_left_to_dlight():
    func = matmul_kernel()
    with Cuda().tvm_target() as target:
        assert rules.schedule_func(func, target).rule == "matmul"


def test_a_kernel_without_gpu_threads_is_refused():
    """A kernel marked scheduled for the CPU (as --quantize int8's are) would be built as host
    code reading GPU memory: schedule-cuda names it instead."""
    from graphopt.errors import PipelineError
    from graphopt.targets.cuda.passes.schedule_cuda import ScheduleCuda

    mod = _module(lambda x: relax.op.nn.relu(x))
    with Cuda().tvm_target():
        mod = relax.transform.LegalizeOps()(mod)
    gvar = next(g for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))
    mod[gvar] = mod[gvar].with_attr("tirx.is_scheduled", True)
    with Cuda().tvm_target(), pytest.raises(PipelineError, match="1 kernels have no GPU"):
        ScheduleCuda()(mod)
    mod[gvar] = mod[gvar].without_attr("tirx.is_scheduled")
    with Cuda().tvm_target():
        assert ScheduleCuda()(mod).stats["scheduled_elementwise"] == 1
