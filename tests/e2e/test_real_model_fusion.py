"""What the graph passes do to the real models, as structural facts (slow).

MiniLM: all six attention blocks (each scheduled by schedule-cpu's attention rule), every GELU
and the Q/K/V projections fused, every LayerNorm one op; CNNs: no batch-norm left, every conv's
activation inside its conv group. Each fused group is one kernel after the target's legalize
stage, and the numbers still match onnxruntime. Needs the bench extras (`make test-slow`).
"""

from __future__ import annotations

import onnx
import pytest
import tvm

import graphopt
from graphopt import _tvm
from graphopt.instrument import max_relative_error
from graphopt.pipeline import instantiate, parse_pipeline, run_passes
from graphopt.reference import ort_run, ort_session
from graphopt.target_infra import make_target
from graphopt.testing import apply_checked

pytestmark = pytest.mark.slow

# O3 fuses with every family, attention included (schedule-cpu's attention rule schedules it).
ALL_FAMILIES = "O3"


@pytest.fixture(scope="module")
def export():
    pytest.importorskip("torch", reason="bench extras not installed (make test-slow)")
    from bench.models.export import export

    return export


def _graph(path, pipeline: str) -> tvm.IRModule:
    """Import and run the pipeline, checking well-formedness and honest `modified` per pass."""
    from graphopt.frontend import import_onnx

    mod = import_onnx(path).mod
    for pass_ in instantiate(parse_pipeline(pipeline)):
        mod = apply_checked(pass_, mod).module
    return mod


def _kernels_from_groups(mod: tvm.IRModule) -> int:
    """call_tir launches of kernels made from fused groups, after the x86 legalize stage (in
    NCHW: the NHWC layout pass inlines conv groups, which FuseOps then fuses again)."""
    target = make_target("x86", {"layout": "NCHW"})
    with target.tvm_target():
        mod = run_passes(mod, instantiate(parse_pipeline(",".join(target.stages()["legalize"]))))
    return sum(
        1
        for call in _tvm.iter_relax_calls(mod)
        if isinstance(call.op, tvm.ir.Op)
        and call.op.name == "relax.call_tir"
        and call.args[0].name_hint.startswith("fused_relax_")
    )


def _matches_onnxruntime(path, pipeline, feeds, tmp_path, rtol=1e-5):
    art = graphopt.compile(path, tmp_path / "art", pipeline=pipeline)
    session = ort_session(path)
    out = art.outputs[0].name
    for feed in feeds:
        assert max_relative_error([ort_run(session, feed)[out]], [art.run(feed)[out]]) <= rtol
    return art


def test_minilm_attention_layernorm_gelu_qkv_fused(export, tmp_path):
    from bench.bench_passes import fusion_facts
    from bench.models.inputs import sentence_batch

    path = export("minilm")
    layer_norms = sum(n.op_type == "LayerNormalization" for n in onnx.load(str(path)).graph.node)
    mod = _graph(path, ALL_FAMILIES)
    facts = fusion_facts(mod)
    assert facts["group_attention"] == 6 and facts["softmax_unfused"] == 0
    assert facts["group_matmul_gelu"] == 6
    assert facts["group_parallel_matmul"] == 6
    assert facts["layer_norm"] == max(layer_norms, 13)  # one op each (or rewritten from parts)
    groups = sum(v for k, v in facts.items() if k.startswith("group_"))
    assert _kernels_from_groups(mod) == groups  # each fused group is one kernel
    art = _matches_onnxruntime(path, ALL_FAMILIES, sentence_batch(2), tmp_path)
    (sched,) = [r for r in art.manifest["report"]["passes"] if r["pass"] == "schedule-cpu"]
    # The six blocks are the same shape: one distinct kernel, scheduled by the attention rule.
    assert sched["stats"]["scheduled_attention"] == 1, sched["stats"]
    assert sched["stats"]["untouched"] == 0, sched["stats"]
    assert sched["stats"]["failed"] == 0, sched["stats"]


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_cnn_batchnorm_gone_and_every_activation_fused(name, export, tmp_path):
    from bench.bench_passes import fusion_facts
    from bench.models.inputs import image_batch

    path = export(name)
    imported = fusion_facts(_graph(path, ""))
    mod = _graph(path, "O3")
    facts = fusion_facts(mod)
    assert facts["batch_norm"] == 0
    assert facts["conv_unfused_activation"] == 0
    assert facts["group_conv_act"] == imported["conv_unfused_activation"] > 30
    groups = sum(v for k, v in facts.items() if k.startswith("group_"))
    assert _kernels_from_groups(mod) == groups
    art = _matches_onnxruntime(path, "O3", [{"input": x} for x in image_batch(2)], tmp_path)
    o2 = graphopt.compile(path, tmp_path / "o2", opt_level=2)
    assert art.manifest["report"]["kernel_calls"] <= o2.manifest["report"]["kernel_calls"]
