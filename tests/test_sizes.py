"""graphopt.sizes: the weight bytes of a library, by dtype, read from the file."""

from __future__ import annotations

import struct

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt.sizes import TENSOR_MAGIC, library_weights
from graphopt.target_infra import make_target


def _header(shape, code, bits, nbytes=None):
    n = int(np.prod(shape)) * bits // 8 if nbytes is None else nbytes
    return (
        TENSOR_MAGIC
        + struct.pack("<QiiiBBH", 0, 1, 0, len(shape), code, bits, 1)
        + struct.pack(f"<{len(shape)}q", *shape)
        + struct.pack("<q", n)
    )


def test_scan_finds_tensors_and_skips_lookalikes(tmp_path):
    good = _header((3, 4), 0, 8) + bytes(12)
    scalar = _header((), 2, 32) + bytes(4)
    bad_size = _header((2, 2), 2, 32, nbytes=7) + bytes(7)  # size does not match the shape
    truncated = _header((1000,), 2, 32) + bytes(10)  # data runs past the end of the file
    blob = b"junk" + good + b"\x00" * 5 + scalar + bad_size + TENSOR_MAGIC + b"xx" + truncated
    path = tmp_path / "lib.so"
    path.write_bytes(blob)
    sizes = library_weights(path)
    assert [c.describe() for c in sizes.constants] == ["int8[3, 4]", "float32[]"]
    assert sizes.weight_bytes == 16
    assert sizes.by_dtype() == {"int8": 12, "float32": 4}
    assert sizes.code_bytes == len(blob) - 16


def test_compiled_library_weights_by_dtype(tmp_path):
    """A real exported library: exactly its constants' bytes, by dtype."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    table = rng.integers(-127, 128, (50, 16)).astype(np.int8)
    bias = rng.integers(-1000, 1000, (16,)).astype(np.int32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    idx = relax.Var("idx", relax.TensorType((4,), "int64"))
    with bb.function("main", [x, idx]):
        with bb.dataflow():
            y = bb.emit(R.matmul(x, relax.const(w)))
            rows = bb.emit(R.astype(R.take(relax.const(table), idx, axis=0), "float32"))
            b = bb.emit(R.astype(relax.const(bias), "float32"))
            out = bb.emit_output(R.add(R.add(y, rows), b))
        bb.emit_func_output(out)
    target = make_target("x86")
    with target.tvm_target():
        mod = relax.transform.LegalizeOps()(bb.get())
    ex = tvm.compile(mod, target=target.tvm_target())
    lib = tmp_path / "model.so"
    ex.export_library(str(lib))
    sizes = library_weights(lib)
    assert sizes.by_dtype() == {"float32": w.nbytes, "int8": table.nbytes, "int32": bias.nbytes}
    assert sizes.library_bytes == lib.stat().st_size
    assert sizes.largest(1)[0].describe() == "int8[50, 16]"
    parts = sizes.breakdown()
    assert parts["int8"] == table.nbytes and parts["int32 vectors"] == bias.nbytes
    assert parts["fp32 small"] == w.nbytes and sum(parts.values()) == sizes.weight_bytes
    assert "weights" in sizes.summary()


def test_report_has_a_weights_row(tmp_path):
    """`graphopt report` shows the artifact's weight bytes (the bundled digits CNN, fp32)."""
    from pathlib import Path

    import graphopt
    from graphopt.report import compare

    model = Path(graphopt.__file__).parent / "models" / "digits_cnn.onnx"
    art = graphopt.compile(model, tmp_path / "a", opt_level=0)
    result = compare(art, model, runs=2, warmup=1)
    weights = library_weights(art.library_path)
    assert result.to_json()["weights"]["weight_bytes"] == weights.weight_bytes
    assert weights.by_dtype().keys() == {"float32"}
    row = next(line for line in result.table().splitlines() if "weights (constants)" in line)
    assert "float32" in row and "of .so" in row
