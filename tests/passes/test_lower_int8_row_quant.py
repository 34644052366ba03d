"""lower-int8: per-row dynamic matmuls quantize their fp32 input inside the kernel.

`quantize{mode=dynamic,granularity=row}` emits abs-max -> scale -> quantize -> dequantize in
front of each matmul; lower-int8 folds that chain into the matmul kernel (`fuse_row_quant`),
which must give bit for bit what the separate kernels give: the numpy integer model below.
Each scheme's kernel (`materialize-int8{isa=..}`) and the portable kernel are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax
from tvm.relax import op as R

from graphopt import _tvm
from graphopt.compress.int8 import qdq
from graphopt.pass_infra import PassResult
from graphopt.pipeline import instantiate, parse_pipeline
from graphopt.testing import apply_checked, run_module

HOST_VNNI = {"avx512vnni", "avx512bw", "avx512f"} <= _tvm.host_cpu_features()
HOST_AVX2 = "avx2" in _tvm.host_cpu_features()
ISAS = [
    pytest.param("vnni", marks=pytest.mark.skipif(not HOST_VNNI, reason="no VNNI")),
    pytest.param("avx2", marks=pytest.mark.skipif(not HOST_AVX2, reason="no AVX2")),
    "generic",
    "portable",  # lower-int8's own kernel, not materialized
]


def _module(x_shape, wq, s_w, bias):
    """matmul(dynamic per-row QDQ(x), DQ(wq)) + bias, as the quantize pass emits it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = qdq.emit_dynamic_qdq(bb, x, per_row=True)
            y = bb.emit(R.matmul(xf, qdq.weight_dequantize(wq, s_w, 1)))
            out = bb.emit_output(R.add(y, relax.const(bias)))
        bb.emit_func_output(out)
    return bb.get()


def _lower(mod, isa: str, fuse: bool):
    (pass_,) = instantiate(parse_pipeline(f"lower-int8{{fuse_row_quant={str(fuse).lower()}}}"))
    result = apply_checked(pass_, mod)
    if isa == "portable":
        return result
    (build,) = instantiate(parse_pipeline(f"materialize-int8{{isa={isa}}}"))
    return PassResult(apply_checked(build, result.module).module, True, result.stats)


def _reference(x, wq, s_w, bias):
    """numpy: per-row scales, round-half-even quantize, int64 GEMM, the kernel's epilogue."""
    k = x.shape[-1]
    rows = x.reshape(-1, k)
    s = np.maximum(np.abs(rows).max(-1), np.float32(qdq.DYNAMIC_EPS)) / np.float32(127)
    q = np.clip(np.round(rows / s[:, None]), -128, 127).astype(np.int64)
    acc = q @ wq.astype(np.int64)
    # (f32(acc) * s_w) * s_row + bias, the last multiply-add fused by LLVM (one rounding)
    t = (acc.astype(np.float32) * s_w.astype(np.float32)).astype(np.float64)
    out = t * s[:, None].astype(np.float64) + bias.astype(np.float64)
    return out.astype(np.float32).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_shape,n", [((1, 9, 33), 37), ((7, 64), 70), ((1, 20, 100), 16)])
def test_fused_row_quant_is_exact(isa, x_shape, n):
    rng = np.random.default_rng(3)
    k = x_shape[-1]
    wq, s_w = qdq.weight_qparams(rng.normal(size=(k, n)).astype(np.float32), 1, True)
    bias = rng.normal(size=n).astype(np.float32)
    result = _lower(_module(x_shape, wq, s_w, bias), isa, fuse=True)
    assert result.stats["lowered_dynamic"] == 1 and result.stats["left"] == 0
    text = str(result.module["main"])
    assert "quantize" not in text and "abs" not in text  # one kernel reads the fp32 x
    x = rng.normal(size=x_shape).astype(np.float32)
    x.reshape(-1, k)[1] *= 50  # an outlier row
    x.reshape(-1, k)[2] = 0  # an all-zero row: the eps floor
    (got,) = run_module(result.module, [x])
    np.testing.assert_array_equal(got, _reference(x, wq, s_w, bias))


def test_unfused_keeps_the_quantize_kernel_and_agrees():
    rng = np.random.default_rng(4)
    wq, s_w = qdq.weight_qparams(rng.normal(size=(48, 20)).astype(np.float32), 1, True)
    bias = rng.normal(size=20).astype(np.float32)
    mod = _module((1, 6, 48), wq, s_w, bias)
    isa = "vnni" if HOST_VNNI else "avx2" if HOST_AVX2 else "generic"
    fused, unfused = _lower(mod, isa, True), _lower(mod, isa, False)
    assert "quantize" in str(unfused.module["main"])
    x = rng.normal(size=(1, 6, 48)).astype(np.float32)
    np.testing.assert_array_equal(
        run_module(fused.module, [x])[0], run_module(unfused.module, [x])[0]
    )


def test_other_scale_chains_are_not_fused():
    """A per-row scale that is not max|x| / 127 of the same x (here: of another tensor) stays
    a kernel argument: fusing it would change the numbers."""
    rng = np.random.default_rng(5)
    wq, s_w = qdq.weight_qparams(rng.normal(size=(16, 8)).astype(np.float32), 1, True)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 16), "float32"))
    other = relax.Var("o", relax.TensorType((1, 4, 16), "float32"))
    with bb.function("main", [x, other]):
        with bb.dataflow():
            amax = bb.emit(R.reshape(R.max(R.abs(other), axis=-1), (4,)))
            s = bb.emit(
                R.divide(
                    R.maximum(amax, relax.const(1e-8, "float32")), relax.const(127.0, "float32")
                )
            )
            zp = relax.const(np.zeros(4, np.int8))
            xq = bb.emit(R.quantize(x, s, zp, axis=1, out_dtype="int8"))
            xf = bb.emit(R.dequantize(xq, s, zp, axis=1, out_dtype="float32"))
            out = bb.emit_output(R.matmul(xf, qdq.weight_dequantize(wq, s_w, 1)))
        bb.emit_func_output(out)
    result = _lower(bb.get(), "generic", fuse=True)
    assert result.stats["lowered_dynamic"] == 1
    assert "quantize" in str(result.module["main"])  # the separate quantize stays
