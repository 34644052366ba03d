"""Model import: load, fix input shapes, clean up at the ONNX level, check, convert to Relax."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import tvm
from tvm import relax

from ..errors import GraphoptError
from .cleanup import clean_for_import
from .dims import SymDim
from .empty_inputs import fold_empty_inputs
from .expand import expand_functions
from .int4_dq import rewrite_blocked_int4
from .load import load_model
from .quantized import rewrite_quantized
from .shapes import TensorSpec, input_specs, make_static, output_specs, parse_shape_arg
from .support import check_supported, converted_op_types
from .symbolic import converting, example_spec, symbolic_shape_dict, with_dim_bounds
from .validate import check_shapes, check_structure

__all__ = [
    "ImportedModel",
    "SymDim",
    "TensorSpec",
    "example_spec",
    "import_onnx",
    "parse_shape_arg",
]


class ImportFailure(GraphoptError):
    """TVM's importer could not convert the (cleaned) model."""


@dataclass
class ImportedModel:
    """A Relax module with weights as constants, and what the manifest needs to know."""

    mod: tvm.IRModule
    onnx_model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str
    seconds: dict[str, float] = field(default_factory=dict)
    onnx_nodes: int = 0
    # Symbolic input dims: name -> (min, max); empty for a static model.
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)

    def example_inputs(self) -> list[TensorSpec]:
        """The inputs with every symbolic dim at a concrete size inside its range."""
        return [example_spec(s, self.dims) for s in self.inputs]

    def ranged_inputs(self) -> list[TensorSpec]:
        """The inputs with each symbolic dim as a `SymDim` carrying its range (what
        calibration data is checked against)."""
        from .dims import SymDim

        def dim(d):
            return SymDim(d, *self.dims[d]) if isinstance(d, str) else d

        return [TensorSpec(s.name, tuple(dim(d) for d in s.shape), s.dtype) for s in self.inputs]


def import_onnx(
    source: str | Path | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int | SymDim | str]] | None = None,
    *,
    cleanup: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ImportedModel:
    """Import an ONNX model for compilation; every user error raises a GraphoptError."""
    say = progress or (lambda _msg: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now

    model, sha = load_model(source)
    nodes_in = len(model.graph.node)
    say(f"import: loaded {nodes_in} ONNX nodes (opset {_opset(model)})")
    check_structure(model)
    model, dims = make_static(model, dict(input_shapes or {}))
    model = fold_empty_inputs(model)
    model = _guarded("ONNX rewrite of quantized operators", rewrite_quantized, model)
    model = _guarded("ONNX rewrite of blocked int4 weights", rewrite_blocked_int4, model)
    model = _guarded("ONNX expansion of function operators", _expand, model)
    lap("load")
    check_supported(model)
    if cleanup:
        model = _guarded("ONNX clean-up", clean_for_import, model)
        say(f"import: ONNX clean-up folded {nodes_in} -> {len(model.graph.node)} nodes")
        lap("cleanup")
        check_supported(model)
    check_shapes(model)
    inputs = _guarded("reading the model's inputs", input_specs, model)
    try:
        from .importer import from_onnx

        with converting(dims):
            mod = from_onnx(model, shape_dict=symbolic_shape_dict(inputs, dims))
    except GraphoptError:
        raise
    except Exception as err:  # noqa: BLE001 - importer errors become one readable line
        raise ImportFailure(f"TVM's ONNX importer failed: {_first_line(err)}") from err
    lap("convert")
    outputs = _relax_output_specs(mod, output_specs(model))
    mod = with_dim_bounds(mod, dims)
    say(f"import: Relax module ready ({sum(seconds.values()):.1f}s)")
    return ImportedModel(mod, model, inputs, outputs, sha, seconds, nodes_in, dims)


def _expand(model: onnx.ModelProto) -> onnx.ModelProto:
    return expand_functions(model, converted_op_types())


def _guarded(step: str, fn, model: onnx.ModelProto):
    """Run an ONNX-level step; its failure on a damaged model is the model's (one line)."""
    try:
        return fn(model)
    except GraphoptError:
        raise
    except Exception as err:  # noqa: BLE001 - onnx_ir SerdeError, KeyError on bad dtypes, ...
        raise ImportFailure(f"{step} failed on this model: {_first_line(err)}") from err


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _first_line(err: Exception) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _relax_output_specs(mod: tvm.IRModule, onnx_outputs: list[TensorSpec]) -> list[TensorSpec]:
    """Output shapes/dtypes as Relax inferred them (ONNX files often leave them unknown)."""
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    if len(fields) != len(onnx_outputs):
        return onnx_outputs
    specs = []
    for spec, sinfo in zip(onnx_outputs, fields):
        if isinstance(sinfo, relax.TensorType) and sinfo.shape is not None:
            try:
                shape = tuple(_dim_text(d) for d in sinfo.shape.values)
            except (TypeError, AttributeError):
                shape = spec.shape
            specs.append(TensorSpec(spec.name, shape, str(sinfo.dtype)))
        else:
            specs.append(spec)
    return specs


def _dim_text(dim) -> int | str:
    """A static dim as an int, a symbolic one as its expression (`seq`, `seq * 2`)."""
    return int(dim) if isinstance(dim, tvm.tirx.IntImm) else str(dim)
