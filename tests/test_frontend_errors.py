"""User errors through the Python API: the exception class from graphopt.errors and its text."""

from __future__ import annotations

import json
import re

import model_builders as mb
import numpy as np
import onnx
import pytest
from onnx import helper

from graphopt.errors import (
    DynamicShapeError,
    GraphoptError,
    InputError,
    ModelLoadError,
    PipelineError,
    TargetError,
    UnsupportedOperatorError,
)
from graphopt.frontend import import_onnx, parse_shape_arg
from graphopt.pipeline import instantiate, parse_pipeline
from graphopt.target_infra import make_target


def test_error_classes_are_user_errors():
    for cls in (
        ModelLoadError,
        UnsupportedOperatorError,
        DynamicShapeError,
        PipelineError,
        TargetError,
        InputError,
    ):
        assert issubclass(cls, GraphoptError)


# ---------------------------------------------------------------------------------------------
# Loading


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found") as info:
        import_onnx(tmp_path / "nope.onnx")
    assert "nope.onnx" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="directory"):
        import_onnx(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        import_onnx(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(0).bytes(4096),
        json.dumps({"graph": {"node": []}}).encode(),
        b"hello, this is plain text\n",
    ],
    ids=["random-bytes", "json", "text"],
)
def test_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model") as info:
        import_onnx(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path):
    data = mb.mlp().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        import_onnx(path)


def test_invalid_graph_file(tmp_path):
    """Parses as ONNX but fails the checker (a node reads a tensor nobody produces)."""
    model = mb.mlp()
    model.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        import_onnx(path)


# ---------------------------------------------------------------------------------------------
# Unsupported operators


def test_unsupported_ops_named_with_nodes():
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(mb.unsupported_ops())
    msg = str(info.value)
    assert msg.startswith("2 unsupported operator type(s)")
    assert "Det [det]" in msg
    assert "com.example.Foo [foo1, foo2]" in msg
    for supported in ("QuantizeLinear", "DequantizeLinear", "Relu"):
        assert supported not in msg


def test_unsupported_op_in_subgraph():
    """Nodes inside If branches are checked too."""

    def branch(name: str, node_name: str, domain: str) -> onnx.GraphProto:
        node = helper.make_node("Bar", ["x"], [f"{name}_y"], name=node_name, domain=domain)
        out = helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, [2])
        return helper.make_graph([node], name, [], [out])

    cond = helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    node = helper.make_node(
        "If",
        ["cond"],
        ["y"],
        name="if1",
        then_branch=branch("then", "bar_then", "com.example"),
        else_branch=branch("else", "bar_else", "com.example"),
    )
    graph = helper.make_graph([node], "g", [cond, x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(model)
    assert re.search(r"com\.example\.Bar \[bar_\w+, bar_\w+\]", str(info.value))
    assert "bar_then" in str(info.value) and "bar_else" in str(info.value)


def test_unnamed_unsupported_node():
    model = mb.unsupported_ops()
    for node in model.graph.node:
        if node.op_type == "Det":
            node.name = ""
    with pytest.raises(UnsupportedOperatorError, match=r"Det \[<node #\d+>\]"):
        import_onnx(model)


# ---------------------------------------------------------------------------------------------
# Shapes


def test_dynamic_dims_need_input_shape():
    with pytest.raises(DynamicShapeError) as info:
        import_onnx(mb.dynamic_batch())
    msg = str(info.value)
    assert "x (N,16)" in msg
    assert "--input-shape x=" in msg


def test_every_dynamic_input_is_named():
    model = mb.transformer_block()
    for inp in model.graph.input:
        inp.type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(DynamicShapeError) as info:
        import_onnx(model)
    assert "x (batch,8,32)" in str(info.value) and "mask (batch,1,8,8)" in str(info.value)


def test_input_shape_resolves_dynamic_dims():
    imported = import_onnx(mb.dynamic_batch(), {"x": (3, 16)})
    assert [(s.name, s.shape) for s in imported.inputs] == [("x", (3, 16))]
    assert [(s.name, s.shape) for s in imported.outputs] == [("y", (3, 4))]


def test_input_shape_for_unknown_input():
    with pytest.raises(InputError) as info:
        import_onnx(mb.dynamic_batch(), {"bogus": (3, 16)})
    assert "bogus" in str(info.value) and "model inputs: x" in str(info.value)


def test_input_shape_wrong_rank():
    with pytest.raises(InputError, match="rank 2"):
        import_onnx(mb.dynamic_batch(), {"x": (3, 16, 1)})


def test_input_shape_conflicts_with_static_dim():
    with pytest.raises(InputError, match="conflicts"):
        import_onnx(mb.mlp(), {"x": (5, 32)})


@pytest.mark.parametrize("dims", [(-1, 16), (-2, 16)])
def test_input_shape_negative_dims(dims):
    """The Python API rejects negative dims (0 is a valid empty dimension in ONNX)."""
    with pytest.raises(InputError, match=">= 0"):
        import_onnx(mb.dynamic_batch(), {"x": dims})


@pytest.mark.parametrize("text", ["x", "x=", "=1,2", "x=2a,b", "x=1,-2", "x=-1"])
def test_bad_input_shape_text(text):
    with pytest.raises(InputError):
        parse_shape_arg(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x=1,3,224,224", ("x", (1, 3, 224, 224))),
        ("x=1x3x8", ("x", (1, 3, 8))),
        ("a=b=2,3", ("a=b", (2, 3))),
    ],
)
def test_input_shape_text(text, expected):
    assert parse_shape_arg(text) == expected


# ---------------------------------------------------------------------------------------------
# Pipelines and targets (checked before any model work)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("fold-constants,no-such-pass", ["unknown pass 'no-such-pass'"]),
        ("fold-constant", ["unknown pass 'fold-constant'", "did you mean", "fold-constants"]),
        ("bogus-one,bogus-two", ["bogus-one", "bogus-two"]),
        ("tvm.NoSuchPass", ["tvm.NoSuchPass"]),
        ("fold-constants{", ["unclosed '{'"]),
        ("fold-constants}", ["unmatched '}'"]),
        ("fold-constants,,dce", ["empty pass name"]),
        ("fold-constants{fast}", ["'fast'", "key=value"]),
        ("fold-constants{fast=1}", ["fold-constants", "no option fast"]),
        ("tvm.FoldConstant{bogus=1}", ["tvm.FoldConstant", "bogus"]),
        ("O2{x=1}", ["preset 'O2'"]),
    ],
)
def test_pipeline_errors(text, words):
    with pytest.raises(PipelineError) as info:
        instantiate(parse_pipeline(text))
    for word in words:
        assert word in str(info.value)


def test_unknown_target():
    with pytest.raises(TargetError, match="unknown target 'riscv'.*x86"):
        make_target("riscv")


def test_unknown_target_option():
    with pytest.raises(TargetError, match="no option turbo"):
        make_target("x86", {"turbo": "1"})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"pipeline": "no-such-pass"}, PipelineError),
        ({"opt_level": 7}, PipelineError),
        ({"target": "riscv"}, TargetError),
        ({"target_options": {"turbo": "1"}}, TargetError),
    ],
)
def test_compile_rejects_bad_options_before_work(graphopt_compile, tmp_path, kwargs, error):
    out = tmp_path / "out"
    with pytest.raises(error):
        graphopt_compile(mb.mlp(), out, **kwargs)
    assert list(tmp_path.iterdir()) == []
