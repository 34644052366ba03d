"""Instruments: print-after, dump-dir, time-passes, verify-each; pass failures name context."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from graphopt.compiler import CompileOptions, compile_model
from graphopt.errors import PipelineError, VerificationError
from graphopt.instrument import DumpDir, PrintAfter, TimePasses
from graphopt.pass_infra import _REGISTRY, GraphPass, PassResult, register_pass
from graphopt.pipeline import PRESETS, PassFailure


def _conv_bn_relu() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "W"),
        numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "B"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "g"),
        numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b"),
        numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "m"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "v"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "cbr",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@relax.expr_functor.mutator
class _ScaleRelu(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.relu":
            return relax.op.multiply(call, relax.const(1.01, "float32"))
        return call


@pytest.fixture
def broken_pass():
    """A pass that scales every relu by 1.01: verify-each must catch it."""

    class BreakNumbers(GraphPass):
        """Deliberately wrong: multiplies relu outputs by 1.01."""

        name = "test-break-numbers"

        def run(self, mod):
            new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
            for gvar, func in mod.functions.items():
                if isinstance(func, relax.Function):
                    new[gvar] = _ScaleRelu().visit_expr(func)
            return PassResult(new, True)

    register_pass(BreakNumbers)
    yield BreakNumbers.name
    _REGISTRY.pop(BreakNumbers.name)


@pytest.fixture
def failing_pass():
    class Explode(GraphPass):
        """Raises, to check the error names the passes before it."""

        name = "test-explode"
        requires = ()

        def run(self, mod):
            raise RuntimeError("boom")

    register_pass(Explode)
    yield Explode.name
    _REGISTRY.pop(Explode.name)


def _compile(tmp_path, **kw):
    return compile_model(_conv_bn_relu(), tmp_path / "art", CompileOptions(**kw))


def test_verify_each_names_the_breaking_pass(tmp_path, broken_pass):
    with pytest.raises(VerificationError, match=f"#2 '{broken_pass}'"):
        _compile(
            tmp_path, pipeline=f"fold-constants,fold-batchnorm,{broken_pass},dce", verify_each=True
        )
    assert not (tmp_path / "art").exists()
    assert list(tmp_path.iterdir()) == []


def test_verify_each_passes_clean_pipeline(tmp_path):
    art = _compile(tmp_path, opt_level=2, verify_each=True)
    assert art.manifest["pipeline"] == PRESETS["O2"]


def test_pass_failure_names_previous_passes(tmp_path, failing_pass):
    with pytest.raises(PassFailure, match="passes that ran before it: fold-constants, dce"):
        _compile(tmp_path, pipeline=f"fold-constants,dce,{failing_pass}")


def test_requires_is_checked(tmp_path):
    class Needy(GraphPass):
        """Needs cse first."""

        name = "test-needy"
        requires = ("cse",)

        def run(self, mod):
            return PassResult(mod, False)

    register_pass(Needy)
    try:
        with pytest.raises(PipelineError, match="requires cse .* ran so far: dce"):
            _compile(tmp_path, pipeline="dce,test-needy")
    finally:
        _REGISTRY.pop(Needy.name)


def test_print_after_selected_pass_only(tmp_path):
    out = io.StringIO()
    _compile(
        tmp_path,
        pipeline="fold-constants,fold-batchnorm,dce",
        instruments=[PrintAfter(names=["fold-batchnorm"], stream=out)],
    )
    text = out.getvalue()
    assert text.count("// ----- IR after") == 1
    assert "fold-batchnorm [graph] (changed) (folded_into_conv=" in text
    assert "R.nn.conv2d" in text and "batch_norm" not in text


def test_print_after_all_and_change(tmp_path):
    every, changed = io.StringIO(), io.StringIO()
    _compile(
        tmp_path,
        pipeline="fold-constants,cse,dce",
        instruments=[
            PrintAfter(all=True, stream=every),
            PrintAfter(only_changed=True, stream=changed),
        ],
    )
    n_all = every.getvalue().count("// ----- IR after")
    n_changed = changed.getvalue().count("// ----- IR after")
    assert n_all > n_changed > 0
    assert "(unchanged)" not in changed.getvalue()


def test_dump_dir_numbered_files_and_pipeline(tmp_path):
    dump = tmp_path / "dump"
    art = _compile(tmp_path, pipeline="fold-constants,dce", instruments=[DumpDir(dump)])
    files = sorted(p.name for p in dump.iterdir())
    assert files[0] == "000-input.py"
    assert files[1] == "001-fold-constants.py" and files[2] == "002-dce.py"
    assert (dump / "pipeline.txt").read_text().strip() == art.manifest["full_pipeline"]
    assert any(f.endswith("tvm_LegalizeOps.py") for f in files)
    assert "# fold-constants [graph] modified=True" in (dump / "001-fold-constants.py").read_text()


def test_time_passes_table(tmp_path):
    timer = TimePasses()
    _compile(tmp_path, opt_level=1, instruments=[timer])
    table = timer.table()
    assert "| fold-constants" in table and "| total" in table
    assert "bindings_folded=" in table
