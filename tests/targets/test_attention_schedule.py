"""schedule-cpu's attention rule: the fused attention kernel scheduled vs unscheduled.

The modules are the attention blocks of tests/passes/test_fuse.py (MiniLM's export: head split,
Q and K scaled by d^-1/4, mask, softmax, NaN guard, head merge; and the plain form), with the
batch and the sequence length as parameters. `fuse` makes them one kernel; the x86 legalize
stage runs; the build with schedule-cpu must give the numbers of the build without it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import tirx as T

from graphopt.pass_infra import make_pass
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.target_infra import make_target
from graphopt.targets.cpu import schedules as rules
from graphopt.testing import apply_checked

HOST = make_target("x86")
HEADS, DIM = 2, 8


def _build(inputs: dict[str, tuple], body) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    params = [relax.Var(n, relax.TensorType(s, "float32")) for n, s in inputs.items()]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def minilm_attention(
    batch: int, seq: int, mask: bool = True, heads: int = HEADS, dim: int = DIM
) -> tvm.IRModule:
    """Attention as torch 2.x exports all-MiniLM-L6-v2 (test_fuse's builder, any batch/seq)."""
    quarter = relax.const(dim**-0.25, "float32")

    def body(bb, q, k, v, *m):
        def split(t, perm):
            t = bb.emit(relax.op.reshape(t, (batch, seq, heads, dim)))
            return bb.emit(relax.op.permute_dims(t, perm))

        qh = bb.emit(relax.op.multiply(split(q, [0, 2, 1, 3]), quarter))
        kt = bb.emit(relax.op.multiply(split(k, [0, 2, 3, 1]), quarter))
        s = bb.emit(relax.op.matmul(qh, kt))
        if mask:
            s = bb.emit(relax.op.add(s, m[0]))
        p = bb.emit(relax.op.nn.softmax(s, axis=-1))
        zero = relax.const(np.zeros((), "float32"))
        p = bb.emit(relax.op.where(bb.emit(relax.op.isnan(p)), zero, p))
        out = bb.emit(relax.op.matmul(p, split(v, [0, 2, 1, 3])))
        out = bb.emit(relax.op.permute_dims(out, [0, 2, 1, 3]))
        return bb.emit(relax.op.reshape(out, (batch, seq, heads * dim)))

    d = heads * dim
    shapes = {"q": (batch, seq, d), "k": (batch, seq, d), "v": (batch, seq, d)}
    if mask:
        shapes["m"] = (batch, 1, seq, seq)
    return _build(shapes, body)


def plain_attention(batch: int, seq: int) -> tvm.IRModule:
    """Heads already split, scale divides the scores, no merge: the matmul writes the output."""

    def body(bb, q, k, v, m):
        s = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))))
        s = bb.emit(relax.op.add(bb.emit(relax.op.divide(s, relax.const(math.sqrt(DIM)))), m))
        return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(s, axis=-1)), v))

    qkv = (batch, HEADS, seq, DIM)
    return _build({"q": qkv, "k": qkv, "v": qkv, "m": (batch, 1, seq, seq)}, body)


def _stage(mod: tvm.IRModule, stage: str) -> tvm.IRModule:
    with HOST.tvm_target():
        return run_passes(mod, instantiate(parse_pipeline(",".join(HOST.stages()[stage]))))


def _legal_fused(mod: tvm.IRModule) -> tvm.IRModule:
    fused = run_passes(mod, instantiate(parse_pipeline("fuse")))
    legal = _stage(fused, "legalize")
    kernels = [f for f in legal.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 1, "fuse should leave the attention as one kernel"
    return legal


def _run(mod: tvm.IRModule, arrays) -> np.ndarray:
    ex = tvm.compile(_stage(mod, "lower"), target=HOST.tvm_target(), relax_pipeline=None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _inputs(mod: tvm.IRModule, seed: int = 0, masked_row: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for p in mod["main"].params:
        shape = [int(x) for x in p.ty.shape]
        if p.name == "m":
            # A padding mask: large negatives on some keys; optionally a row masked with -inf
            # everywhere (softmax gives NaN there, the NaN guard zeros).
            m = np.where(rng.uniform(size=shape) < 0.3, -1e9, 0.0).astype("float32")
            if masked_row:
                m[..., 1, :] = -np.inf
            arrays.append(m)
        else:
            arrays.append(rng.standard_normal(shape).astype("float32"))
    return arrays


def check_attention(mod: tvm.IRModule, masked_row: bool = False):
    legal = _legal_fused(mod)
    with HOST.tvm_target():
        result = apply_checked(make_pass("schedule-cpu"), legal)
    assert result.stats["scheduled_attention"] == 1, result.stats
    assert result.stats["failed"] == 0, result.stats
    (func,) = [f for f in result.module.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert bool(func.attrs[rules.SCHEDULED_ATTR])
    arrays = _inputs(mod, masked_row=masked_row)
    # Scheduled build first: the VM's pooled allocator could hand the reference's freed output
    # to it, hiding outputs the schedule forgot to write.
    got = _run(result.module, arrays)
    want = _run(legal, arrays)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return result


@pytest.mark.parametrize(
    "batch,seq,mask",
    [
        (1, 7, True),
        (1, 7, False),
        (2, 13, True),
        (2, 13, False),
        (1, 16, True),
        (3, 8, True),
        (2, 64, True),  # row max / sum in SIMD lanes (rfactor) on any x86 host
        (1, 67, True),  # more keys than a tile, not a multiple of the lanes
    ],
)
def test_minilm_attention_scheduled_same_numbers(batch, seq, mask):
    check_attention(minilm_attention(batch, seq, mask))


def test_libm_exp_softmax_is_scheduled_too(monkeypatch):
    """With fast_softmax=false the exp block calls libm's exp instead of the polynomial."""
    monkeypatch.setitem(globals(), "HOST", make_target("x86", {"fast_softmax": "false"}))
    check_attention(minilm_attention(2, 13, True))


def test_fully_masked_row_goes_through_the_nan_guard():
    check_attention(minilm_attention(2, 16, mask=True), masked_row=True)


@pytest.mark.parametrize("batch,seq", [(1, 7), (2, 13), (2, 32)])
def test_plain_attention_scheduled_same_numbers(batch, seq):
    """Output written by the P V matmul itself: rows are (batch, head, query)."""
    check_attention(plain_attention(batch, seq))


def test_scores_and_output_are_register_tiled():
    """The schedule's shape: a parallel row-block loop, vectorized matmul tiles, one exp,
    vectorized row reductions."""
    legal = _legal_fused(minilm_attention(1, 64, heads=4, dim=32))  # 2^20 multiply-adds
    (func,) = [f for f in legal.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    info = rules.CpuInfo(lanes=8, registers=16, cores=4)
    out = _attention_only(func, info)
    assert out.rule == "attention" and out.errors == []
    text = out.func.script()
    assert "T.parallel" in text
    assert text.count("T.vectorized") >= 6  # score tile + init, output tile + init, exp, probs
    # exp evaluated once per score (fast-softmax's polynomial: one reinterpret per evaluation)
    assert text.count("T.exp(") + text.count("T.reinterpret(") == 1
    assert "T.unroll" in text  # the row block of the register tiles
    assert text.count("_rf_update") == 2  # row max and row sum in lanes


def test_attention_rule_can_be_switched_off():
    legal = _legal_fused(minilm_attention(1, 7))
    with HOST.tvm_target():
        result = apply_checked(make_pass("schedule-cpu", {"rules": "reduction:elementwise"}), legal)
    assert result.stats["scheduled_attention"] == 0


def test_attention_that_also_returns_probabilities_is_declined():
    """Two outputs (the probabilities are a model output): not this rule's kernel."""

    def body(bb, q, k, v):
        s = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))))
        p = bb.emit(relax.op.nn.softmax(s, axis=-1))
        return relax.Tuple([bb.emit(relax.op.matmul(p, v)), p])

    qkv = (1, HEADS, 8, DIM)
    legal = _legal_fused(_build({"q": qkv, "k": qkv, "v": qkv}, body))
    (func,) = [f for f in legal.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    out = _attention_only(func, rules.cpu_info(HOST.tvm_target()))
    assert out.rule is None and out.errors == []


def _softmax_matmul(bb, x, w):
    return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(x, axis=-1)), w))


@pytest.mark.parametrize(
    "inputs,body",
    [
        ({"x": (2, 8, 16), "w": (16, 8)}, lambda bb, x, w: bb.emit(relax.op.matmul(x, w))),
        ({"x": (2, 8, 16)}, lambda bb, x: bb.emit(relax.op.nn.softmax(x, axis=-1))),
        ({"x": (2, 8, 16), "w": (16, 8)}, _softmax_matmul),
    ],
    ids=["matmul", "softmax", "softmax_then_matmul"],
)
def test_non_attention_functions_are_declined(inputs, body):
    """Not attention: no error, the function left to the generic rules."""
    legal = _stage(_build(inputs, body), "legalize")
    info = rules.cpu_info(HOST.tvm_target())
    for func in legal.functions.values():
        if isinstance(func, tvm.tirx.PrimFunc):
            out = _attention_only(func, info)
            assert out.rule is None and out.errors == [] and out.func.same_as(func)
    with HOST.tvm_target():
        result = apply_checked(make_pass("schedule-cpu"), legal)
    assert result.stats["scheduled_attention"] == 0 and result.stats["failed"] == 0
    scheduled = sum(v for k, v in result.stats.items() if k.startswith("scheduled_"))
    assert scheduled >= 1, result.stats


def test_kernel_without_root_block_is_declined():
    """Opaque kernels (the importer's scatter_elements) have no root block: declined."""

    @T.prim_func(private=True, s_tir=True)
    def opaque(a: T.Buffer((3,), "int64"), out: T.Buffer((3,), "int64")):
        with T.sblock("scatter_generic"):
            T.reads()
            T.writes()
            for v in range(3):
                out[v] = a[v]

    outcome = _attention_only(opaque, rules.CpuInfo(lanes=8, registers=16, cores=2))
    assert outcome.rule is None and outcome.errors == []


def _attention_only(func, info):
    """The registry with only the attention rule enabled (what schedule-cpu tries first)."""
    return rules.schedule_func(func, info, HOST.tvm_target(), enabled={"attention"})


def test_attention_is_first_in_the_registry():
    assert rules.RULES[0] == "attention"
    assert [r.name for r in rules.REGISTRY] == list(rules.RULES)
