"""The bf16 attention kernel (targets/cpu/precision/attention.py) against its numpy model, and
`precision-attention` (targets/cpu/passes/): which fused attentions it replaces, the gate, and
whole builds against the fp32 attention. Kernels run where this host has AVX512_BF16 (they
compile everywhere)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.precision_ops import ATTENTION_ATTR
from graphopt.target_infra import make_target
from graphopt.targets.cpu.precision import attention as A
from graphopt.testing import apply_checked
from tests.targets.test_attention_schedule import minilm_attention, plain_attention

ZNVER4 = {"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
HOST_BF16 = {"avx512bf16", "avx512f"} <= _tvm.host_cpu_features()
needs_bf16 = pytest.mark.skipif(not HOST_BF16, reason="this host has no AVX512_BF16")

SPECS = {
    # MiniLM's form: Q and K scaled, a [1, 1, S, S] mask, the NaN guard
    "minilm": A.AttentionSpec(1, 40, 40, 3, 32, 0.42, 0.42, 1.0, (1, 1, 40, 40), 0.0),
    # keys not a multiple of 16, a padding mask per batch, the scale on the scores
    "padding_mask": A.AttentionSpec(2, 13, 21, 3, 16, 1.0, 1.0, 0.25, (2, 1, 1, 21), None),
    # cross attention (other key count), a rank-2 mask, head dim 64, no guard
    "cross_rank2_mask": A.AttentionSpec(1, 9, 50, 2, 64, 0.5, 1.0, 1.0, (9, 50), None),
    "no_mask": A.AttentionSpec(1, 77, 77, 2, 48, 1.0, 1.0, 0.125, None, 0.0),
}


def _build(func):
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(module, target=_tvm.make_target(ZNVER4))


def _operands(spec: A.AttentionSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = spec.heads * spec.head_dim
    q = rng.standard_normal((spec.batch, spec.seq_q, d)).astype(np.float32)
    k = rng.standard_normal((spec.batch, spec.seq_k, d)).astype(np.float32)
    v = rng.standard_normal((spec.batch, spec.seq_k, d)).astype(np.float32)
    mask = None
    if spec.mask_shape is not None:
        mask = np.where(rng.random(spec.mask_shape) < 0.3, -1e4, 0).astype(np.float32)
    return q, k, v, mask


def _run(lib, q, k, v, mask) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros(q.shape, np.float32))
    args = [q, k, v] + ([mask] if mask is not None else [])
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


@needs_bf16
@pytest.mark.parametrize("case", list(SPECS))
def test_kernel_vs_numpy_model(case):
    """Equal to the model up to the exp's and the row sum's rounding: an exp whose bf16
    rounding flips moves an output by at most 2^-8 of its probability times |v|."""
    spec = SPECS[case]
    q, k, v, mask = _operands(spec)
    got = _run(_build(A.attention16_kernel(spec)), q, k, v, mask)
    want = A.reference_attention16(q, k, v, mask, spec)
    assert np.abs(got - want).max() <= 2.0**-8 * np.abs(v).max()
    # most outputs agree to fp32 rounding (the row sums' order differs)
    assert np.median(np.abs(got - want) / (np.abs(want) + 1e-6)) < 1e-5


@needs_bf16
def test_fully_masked_row_takes_the_guard_value():
    """A row of -inf scores is NaN in the graph's softmax; the NaN guard makes it zeros."""
    spec = SPECS["minilm"]
    q, k, v, mask = _operands(spec, seed=1)
    mask[..., 5, :] = -np.inf
    got = _run(_build(A.attention16_kernel(spec)), q, k, v, mask)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[0, 5], 0)
    np.testing.assert_allclose(got, A.reference_attention16(q, k, v, mask, spec), atol=0.02)


def _legal(mod: tvm.IRModule, raw: dict[str, str], mark: bool = True) -> tvm.IRModule:
    """fuse, then the x86 legalize stage up to precision-attention's place, for a target."""
    if mark:
        mod = mod.with_attr(ATTENTION_ATTR, "bf16")
    target = make_target("x86", raw)
    fused = run_passes(mod, instantiate(parse_pipeline("fuse")))
    with target.tvm_target():
        return apply_checked(make_pass("precision-attention"), fused)


def test_minilm_form_becomes_one_kernel():
    result = _legal(minilm_attention(1, 20, heads=2, dim=16), {"mcpu": "znver4"})
    assert result.stats["attention_bf16"] == 1, result.stats
    kernels = [f for f in result.module.functions.values() if A.KERNEL_ATTR in (f.attrs or {})]
    assert len(kernels) == 1
    spec_text = str(kernels[0].attrs[A.KERNEL_ATTR])
    assert "nan_value=0.0" in spec_text and "mask_shape=(1, 1, 20, 20)" in spec_text


def test_other_forms_and_head_dims_stay_fp32():
    """Heads split outside the group (no reshape to read), or a head dim of 8: left alone."""
    for mod in (plain_attention(1, 16), minilm_attention(1, 16, heads=2, dim=8)):
        result = _legal(mod, {"mcpu": "znver4"})
        assert result.stats["attention_bf16"] == 0
        assert result.stats["attention_fp32"] == 1


def test_gate_and_mark():
    mod = minilm_attention(1, 16, heads=2, dim=16)
    no_bf16 = _legal(mod, {"mcpu": "znver3"})
    assert not no_bf16.modified and no_bf16.stats["no_instruction"] == 1
    unmarked = _legal(mod, {"mcpu": "znver4"}, mark=False)
    assert not unmarked.modified and unmarked.stats["attention_bf16"] == 0


@needs_bf16
@pytest.mark.parametrize("mask", [True, False])
def test_build_matches_the_fp32_attention(mask):
    """The whole x86 build with the bf16 kernel against the one without (the fp32 fused
    attention), on MiniLM's form: bf16 operands cost about 3 significant digits."""
    mod = minilm_attention(2, 24, mask=mask, heads=2, dim=32)
    rng = np.random.default_rng(2)
    arrays = [
        rng.standard_normal([int(x) for x in p.ty.shape]).astype(np.float32)
        for p in mod["main"].params
    ]
    outs = []
    for mark in (True, False):
        target = make_target("x86", {"mcpu": "znver4"})
        with target.tvm_target():
            marked = mod.with_attr(ATTENTION_ATTR, "bf16") if mark else mod
            fused = run_passes(marked, instantiate(parse_pipeline("fuse")))
            stages = target.stages()
            lowered = run_passes(
                fused,
                instantiate(
                    parse_pipeline(
                        ",".join([*stages["legalize"], *stages["schedule"], *stages["lower"]])
                    )
                ),
            )
        ex = tvm.compile(lowered, target=target.tvm_target(), relax_pipeline=None)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        outs.append(vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy())
    bf16, fp32 = outs
    assert np.abs(bf16 - fp32).max() < 0.03 * np.abs(fp32).max()
    cos = (bf16 * fp32).sum() / np.linalg.norm(bf16) / np.linalg.norm(fp32)
    assert cos > 0.9999
