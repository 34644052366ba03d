"""Read an ONNX model from a path or a ModelProto, with errors a user can act on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from ..errors import ModelLoadError


def load_model(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Return the model and the sha256 of its serialized bytes (recorded in the manifest)."""
    if isinstance(source, onnx.ModelProto):
        return source, hashlib.sha256(source.SerializeToString()).hexdigest()
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"model path is a directory, expected an .onnx file: {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelLoadError(f"cannot read model file {path}: {err.strerror}") from err
    if not data:
        raise ModelLoadError(f"model file is empty: {path}")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for garbage
        raise ModelLoadError(f"{path} is not a valid ONNX model (cannot parse: {err})") from err
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path} is not a valid ONNX model (no graph found)")
    if model.graph.initializer and any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    ):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(f"{path}: cannot load its external weight files: {err}") from err
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelLoadError(f"{path} is not a valid ONNX model: {first}") from err
    return model, hashlib.sha256(data).hexdigest()
