"""The CUDA `attention` rule: one kernel per fused attention group, checked on the CPU.

The CUDA legalize stage fuses attention (after mixed-precision); the attention kernel of the
legalized module is scheduled by the rule, its thread loops are made serial
(`cuda_tools.serial_threads`) and the whole module runs on the CPU: fp32 against numpy (and
onnxruntime for an ONNX block in MiniLM's export form), fp16 against numpy rounding where the
kernel rounds, bf16 against the unscheduled module. Also the variants (mask or none, NaN
guard, head merge or none, the probabilities as an extra output, rows and heads that are not
multiples of a warp, tiles that do not fit shared memory) and the limits (rows longer than
MAX_KEYS keys stay three kernels). The compile tests (nvcc) build a MiniLM-like block for sm_90
and sm_75 and check the report and the PTX. Slow: the real MiniLM against onnxruntime.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tvm
from cuda_tools import needs_nvcc, serial_threads
from tvm import relax, tirx
from tvm.s_tir import Schedule

import graphopt
from graphopt.attention_match import match_attention
from graphopt.build import evaluate, run_stages
from graphopt.pass_infra import make_pass
from graphopt.targets.cuda import fatbin
from graphopt.targets.cuda.schedules import attention, rules
from graphopt.targets.cuda.target import Cuda

R = relax.op


def _const(value: float) -> relax.Expr:
    return relax.const(np.float32(value))


def attention_module(b, h, s, d, *, mask=True, guard=False, merge=True, qk_scale=False,
                     probs_out=False) -> tvm.IRModule:  # fmt: skip
    """Attention on projections [b, s, h*d] as exporters write it: head split, scale (on the
    scores, or d^-1/4 on Q and K), additive mask [b, 1, s, s], softmax, NaN guard, P.V, merge."""
    names = ["q", "k", "v"] + (["mask"] if mask else [])
    shapes = [(b, s, h * d)] * 3 + [(b, 1, s, s)] * mask
    params = [relax.Var(n, relax.TensorType(sh, "float32")) for n, sh in zip(names, shapes)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():

            def heads(t, perm):
                return bb.emit(R.permute_dims(bb.emit(R.reshape(t, (b, s, h, d))), perm))

            q, kt, v = (
                heads(t, p) for t, p in zip(params, ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]))
            )
            if qk_scale:
                q = bb.emit(R.multiply(q, _const(d**-0.25)))
                kt = bb.emit(R.multiply(kt, _const(d**-0.25)))
                scores = bb.emit(R.matmul(q, kt))
            else:
                scores = bb.emit(R.multiply(bb.emit(R.matmul(q, kt)), _const(1 / math.sqrt(d))))
            if mask:
                scores = bb.emit(R.add(scores, params[3]))
            probs = bb.emit(R.nn.softmax(scores, axis=-1))
            if guard:
                probs = bb.emit(R.where(R.isnan(probs), _const(0.0), probs))
            out = bb.emit(R.matmul(probs, v))
            if merge:
                out = bb.emit(R.reshape(R.permute_dims(out, [0, 2, 1, 3]), (b, s, h * d)))
            result = bb.emit_output(relax.Tuple([out, probs]) if probs_out else out)
        bb.emit_func_output(result)
    return bb.get()


def reference(arrays, h, d, *, merge=True, half=None, probs_out=False):
    """numpy; `half` (np.float16): rounded where the fp16 kernel rounds (inputs, the scores,
    the scaled scores, the probabilities, the output), accumulating in fp32."""
    q, k, v = (a.reshape(a.shape[0], a.shape[1], h, d).transpose(0, 2, 1, 3) for a in arrays[:3])
    if half is None:
        q, k, v = (x.astype(np.float64) for x in (q, k, v))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    else:
        q, k, v = (x.astype(half).astype(np.float32) for x in (q, k, v))
        s = (q @ k.transpose(0, 1, 3, 2)).astype(half)
        s = (s * half(1 / math.sqrt(d))).astype(np.float32)
    if len(arrays) > 3:
        s = s + arrays[3]
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    pv = p if half is None else p.astype(half).astype(np.float32)
    o = pv @ v
    if half is not None:
        o = o.astype(half).astype(np.float32)
    if merge:
        o = o.transpose(0, 2, 1, 3).reshape(arrays[0].shape)
    return [o, p] if probs_out else [o]


def _cuda(precision: str = "fp32") -> Cuda:
    return Cuda(Cuda.Options(arch="sm_90", precision=precision))


def _attention_kernel(mod: tvm.IRModule):
    found = [
        (gv, f)
        for gv, f in mod.functions.items()
        if isinstance(f, tirx.PrimFunc) and match_attention(Schedule(f), f) is not None
    ]
    assert len(found) <= 1
    return found[0] if found else (None, None)


def legalized(mod: tvm.IRModule, precision: str = "fp32") -> tvm.IRModule:
    return run_stages(mod, _cuda(precision), ["legalize"])


def with_serial_attention(mod: tvm.IRModule, precision: str = "fp32") -> tvm.IRModule:
    """The legalized module with its attention kernel scheduled by the rule, made serial."""
    gv, func = _attention_kernel(mod)
    assert gv is not None, "no fused attention kernel"
    with _cuda(precision).tvm_target() as target:
        outcome = rules.schedule_func(func, target)
    assert outcome.rule == "attention", outcome.errors
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    new[gv] = serial_threads(outcome.func.without_attr("tirx.is_scheduled"))
    return new


def _inputs(mod: tvm.IRModule, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for p in mod["main"].params:
        shape = [int(x) for x in p.ty.shape]
        if p.name == "mask":
            arrays.append(np.where(rng.random(shape) < 0.2, -1e4, 0.0).astype(np.float32))
        else:
            arrays.append(rng.standard_normal(shape).astype(np.float32))
    return arrays


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


FP32_CASES = {
    # (b, h, s, d), options
    "mask_merge": ((2, 2, 16, 8), {}),
    "no_mask_no_merge": ((1, 3, 24, 16), {"mask": False, "merge": False}),
    "minilm_form": ((1, 2, 128, 32), {"qk_scale": True, "guard": True}),
    "probs_output": ((1, 2, 16, 8), {"probs_out": True}),
    "rows_not_a_warp": ((1, 2, 20, 24), {}),
    "v_in_global": ((1, 1, 128, 64), {}),  # K^T and V: 65 KiB, over the budget
    "both_in_global": ((1, 1, 256, 64), {"mask": False}),  # K^T alone: 65 KiB
}


@pytest.mark.parametrize("case", FP32_CASES)
def test_fp32_kernel_matches_numpy(case):
    (b, h, s, d), opts = FP32_CASES[case]
    mod = legalized(attention_module(b, h, s, d, **opts))
    arrays = _inputs(mod)
    got = evaluate(with_serial_attention(mod), arrays)
    want = reference(arrays, h, d, merge=opts.get("merge", True), probs_out="probs_out" in opts)
    for g, w in zip(got, want):
        assert _rel_err(g, w) <= 1e-5


def test_plans_keep_tiles_within_shared_memory():
    """The two large cases above: V first, then K^T, leave shared memory."""
    for case, tiles in (("v_in_global", (True, False)), ("both_in_global", (False, False))):
        (b, h, s, d), opts = FP32_CASES[case]
        _, func = _attention_kernel(legalized(attention_module(b, h, s, d, **opts)))
        p = attention.plans(match_attention(Schedule(func), func))[0]
        assert (p.k_shared, p.v_shared) == tiles
        sch = attention.schedule_attention(func)
        assert attention.shared_allocated(sch.mod["main"]) <= attention.SHARED_BYTES


def test_fp16_kernel_rounds_where_numpy_does():
    b, h, s, d = 2, 2, 32, 16
    mod = legalized(attention_module(b, h, s, d), "fp16")
    arrays = _inputs(mod)
    (got,) = evaluate(with_serial_attention(mod, "fp16"), arrays)
    (want,) = reference(arrays, h, d, half=np.float16)
    (exact,) = reference(arrays, h, d)
    assert _rel_err(got, want) <= 2e-3  # an fp16 rounding step, summation order
    assert _rel_err(got, exact) > _rel_err(got, want)  # the kernel does round


@pytest.mark.parametrize(
    ("precision", "opts", "tol"),
    [("bf16", {"guard": True}, 1e-2), ("fp16", {"guard": True, "qk_scale": True}, 2e-3)],
)
def test_half_kernel_matches_the_unscheduled_module(precision, opts, tol):
    """bf16 (numpy has no bf16) and fp16 in MiniLM's form: against the legalized module run
    unscheduled on the CPU, which rounds where the graph does."""
    b, h, s, d = 1, 2, 32, 16
    mod = legalized(attention_module(b, h, s, d, **opts), precision)
    arrays = _inputs(mod)
    (got,) = evaluate(with_serial_attention(mod, precision), arrays)
    (want,) = evaluate(mod, arrays)
    assert _rel_err(got, want) <= tol  # output rounding, summation order
    (exact,) = reference(arrays, h, d)
    assert _rel_err(got, exact) <= 3 * tol


def _fuses_without_limit(mod: tvm.IRModule) -> bool:
    return make_pass("fuse").run(mod).stats["attention"] == 1


def test_rows_beyond_max_keys_stay_three_kernels():
    s = attention.MAX_KEYS + 64
    graph = attention_module(1, 1, s, 8, mask=False)
    assert _fuses_without_limit(graph)
    mod = legalized(graph)
    assert _attention_kernel(mod) == (None, None)
    with _cuda().tvm_target() as target:
        chosen = {
            rules.schedule_func(f, target).rule
            for f in mod.functions.values()
            if isinstance(f, tirx.PrimFunc)
        }
    assert "softmax" in chosen and "attention" not in chosen


def test_rules_without_attention_keep_three_kernels():
    """`rules=` without `attention` (an A/B comparison on a GPU): no attention group, which
    dlight would otherwise take with its Fallback."""
    others = tuple(r for r in rules.RULES if r != "attention")
    target = Cuda(Cuda.Options(arch="sm_90", rules=others))
    mod = run_stages(attention_module(1, 2, 16, 8), target, ["legalize"])
    assert _attention_kernel(mod) == (None, None)
    assert "fuse" not in ",".join(target.stages()["legalize"])
    assert any(n.startswith("fuse{") for n in _cuda().stages()["legalize"])


def test_symbolic_rows_are_not_fused():
    n = tirx.Var("n", "int64")
    q = relax.Var("q", relax.TensorType((1, n, 16), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [q]):
        with bb.dataflow():
            t = bb.emit(R.permute_dims(q, [0, 2, 1]))
            p = bb.emit(R.nn.softmax(bb.emit(R.matmul(q, t)), axis=-1))
            out = bb.emit_output(R.matmul(p, q))
        bb.emit_func_output(out)
    assert _attention_kernel(legalized(bb.get())) == (None, None)


# --- An ONNX block in MiniLM's export form, through graphopt.compile -------------------------


def minilm_block(seq: int = 128, dim: int = 64, heads: int = 2, seed: int = 0):
    """Linear Q/K/V, head split, d^-1/4 on Q and K^T, a 0/1 attention mask turned additive,
    softmax, the NaN guard, P.V, head merge, output linear, residual, layer norm."""
    from model_builders import GraphBuilder, _value_info
    from onnx import TensorProto

    g = GraphBuilder(seed)
    hd = dim // heads
    split = g.const([1, seq, heads, hd], "heads", np.int64)

    def heads_of(t, perm):
        return g.op("Transpose", [g.op("Reshape", [t, split])], perm=perm)

    scale = g.const(np.float32(hd**-0.25))
    q = g.op("Mul", [heads_of(g.linear("x", dim, dim), [0, 2, 1, 3]), scale])
    k = g.op("Mul", [heads_of(g.linear("x", dim, dim), [0, 2, 3, 1]), scale])
    v = heads_of(g.linear("x", dim, dim), [0, 2, 1, 3])
    m = g.op(
        "Unsqueeze", [g.op("Cast", ["mask"], to=TensorProto.FLOAT), g.const([1, 2], "ax", np.int64)]
    )
    add = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), m]), g.const(np.float32(-3.4e38))])
    p = g.op("Softmax", [g.op("Add", [g.op("MatMul", [q, k]), add])], axis=-1)
    p = g.op("Where", [g.op("IsNaN", [p]), g.const(np.float32(0.0)), p])
    ctx = g.op("Transpose", [g.op("MatMul", [p, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const([1, seq, dim], "merge", np.int64)])
    y = g.layer_norm(g.op("Add", ["x", g.linear(ctx, dim, dim)]), dim)
    inputs = [_value_info("x", [1, seq, dim]), _value_info("mask", [1, seq], TensorProto.INT64)]
    return g.model(inputs, [("y", y, [1, seq, dim])], "minilm_block")


def _minilm_inputs(seq: int = 128, dim: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = np.ones((1, seq), np.int64)
    mask[:, seq - 17 :] = 0  # padding tokens
    return {"x": rng.standard_normal((1, seq, dim)).astype(np.float32), "mask": mask}


def test_minilm_form_block_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    from graphopt.frontend import import_onnx

    model = minilm_block()
    feeds = _minilm_inputs()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, feeds)
    mod = legalized(import_onnx(model, None).mod)
    (got,) = evaluate(with_serial_attention(mod), [feeds["x"], feeds["mask"]])
    assert _rel_err(got, want) <= 1e-5


@pytest.fixture(scope="module")
def minilm_compiled(tmp_path_factory):
    """compiled(arch, precision) -> (artifact, schedule-cuda stats), compiled once."""
    from model_builders import save

    root = tmp_path_factory.mktemp("attention")
    path = save(minilm_block(), root / "minilm_block.onnx")
    cache: dict[tuple, tuple] = {}

    def get(arch: str, precision: str):
        if (arch, precision) not in cache:
            art = graphopt.compile(
                path, root / f"{arch}-{precision}", target="cuda",
                target_options={"arch": arch, "precision": precision},
            )  # fmt: skip
            rows = json.loads((art.directory / "manifest.json").read_text())["report"]["passes"]
            stats = next(r["stats"] for r in rows if r["pass"].startswith("schedule-cuda"))
            cache[(arch, precision)] = (art, stats)
        return cache[(arch, precision)]

    return get


@pytest.mark.cuda
@needs_nvcc
@pytest.mark.parametrize(
    ("arch", "precision"), [("sm_90", "fp32"), ("sm_90", "fp16"), ("sm_75", "fp32")]
)
def test_minilm_block_attention_is_one_kernel(minilm_compiled, arch, precision):
    art, stats = minilm_compiled(arch, precision)
    assert stats["scheduled_attention"] == 1
    assert stats["scheduled_softmax"] == 0  # no separate softmax, QK^T or PV kernels
    assert stats["scheduled_fallback"] == 0 and stats["untouched"] == 0
    assert stats.get("failed", 0) == 0
    entries = {(e.kind, e.arch) for e in fatbin.entries(art.library_path.read_bytes())}
    assert {("elf", arch), ("ptx", arch)} <= entries
    ptx = fatbin.ptx_text(art.library_path)
    assert "shfl.sync" in ptx and "bar.sync" in ptx  # warp reductions, shared tiles
    assert "__local_depot" not in ptx  # scores and accumulators in registers, no local memory


# --- The real MiniLM (slow: about 30 s per precision on 2 cores) ----------------------------


def _minilm_path():
    from pathlib import Path

    from graphopt.env import CACHE_DIR

    return Path(CACHE_DIR.get()) / "models" / "minilm.onnx"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_minilm_with_the_attention_kernel_matches_onnxruntime(precision):
    """all-MiniLM-L6-v2 (128 tokens, 20 of them padding), its attention kernels run serially on
    the CPU, the other kernels unscheduled: fp32 relative error <= 1e-5, fp16 cosine >= 0.9999
    (the fp16 conversion alone gives 0.9999996)."""
    import onnx
    import onnxruntime as ort

    from graphopt.frontend import import_onnx

    path = _minilm_path()
    if not path.exists():
        pytest.skip(f"{path} not downloaded")
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in model.graph.input:
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if "mask" in inp.name:
            feeds[inp.name] = np.ones(shape, np.int64)
            feeds[inp.name][:, -20:] = 0
        else:
            feeds[inp.name] = rng.integers(0, 2000, shape).astype(np.int64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, feeds)[:1]
    imported = import_onnx(str(path), None).mod
    names = [p.name for p in imported["main"].params]
    mod = legalized(imported, precision)
    (got,) = evaluate(with_serial_attention(mod, precision), [feeds[n] for n in names])[:1]
    got = got.astype(np.float32)
    if precision == "fp32":
        assert _rel_err(got, want) <= 1e-5
    else:
        cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        assert cosine >= 0.9999
