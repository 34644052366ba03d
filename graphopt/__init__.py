"""graphopt: a compiler-style graph optimizer for neural networks, built on Apache TVM.

    art = graphopt.compile("model.onnx", "out/", target="x86", opt_level=2)
    outputs = graphopt.load("out/").run({"input": x})

`graphopt.load` and `Artifact` need only the TVM runtime; `compile` pulls in the compiler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from . import env  # noqa: E402

env.configure_tvm_runtime()  # before TVM's thread pool starts

from .artifact import Artifact, load  # noqa: E402
from .errors import GraphoptError  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path


def compile(
    model: Any,
    output: str | Path,
    *,
    target: str = "x86",
    opt_level: int = 2,
    pipeline: str | None = None,
    input_shapes: dict | None = None,
    target_options: dict | None = None,
    **kwargs: Any,
) -> Artifact:
    """Compile an ONNX model (path or ModelProto) into an artifact directory.

    `quantization=QuantOptions(...)` (graphopt.compress.int8.flow) is shorthand for
    `compression=[Int8(QuantOptions(...))]`."""
    from .compiler import CompileOptions, compile_model

    progress = kwargs.pop("progress", None)
    quantization = kwargs.pop("quantization", None)
    if quantization is not None:
        from .compress.int8.method import Int8

        kwargs["compression"] = [Int8(quantization), *kwargs.get("compression", ())]
    opts = CompileOptions(
        target=target,
        opt_level=opt_level,
        pipeline=pipeline,
        input_shapes=input_shapes or {},
        target_options=target_options or {},
        **kwargs,
    )
    return compile_model(model, output, opts, progress=progress)


__all__ = ["Artifact", "GraphoptError", "compile", "load", "__version__"]
