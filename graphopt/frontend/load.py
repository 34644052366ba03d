"""Read an ONNX model from a path or a ModelProto, with errors a user can act on."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import onnx

from ..errors import ModelLoadError

# ONNX files are protobufs, which cannot exceed 2 GiB (larger models keep weights outside).
MAX_MODEL_BYTES = 2 << 30


def _read_model_file(path: Path) -> bytes:
    """The file's bytes, once it is known to be a regular file of a sane size.

    A FIFO would block forever and /dev/zero grow without end: neither is opened.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except OSError as err:
        raise ModelLoadError(f"cannot read model file {path}: {err.strerror}") from err
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"model path is a directory, expected an .onnx file: {path}")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"model path is not a regular file (a device or pipe?): {path}")
    if info.st_size > MAX_MODEL_BYTES:
        raise ModelLoadError(
            f"model file {path} is {info.st_size / 2**30:.1f} GiB; ONNX files hold at most 2 GiB"
        )
    try:
        with open(path, "rb") as f:
            return f.read(MAX_MODEL_BYTES + 1)
    except OSError as err:
        raise ModelLoadError(f"cannot read model file {path}: {err.strerror}") from err


def load_model(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Return the model and the sha256 of its serialized bytes (recorded in the manifest)."""
    if isinstance(source, onnx.ModelProto):
        return source, hashlib.sha256(source.SerializeToString()).hexdigest()
    path = Path(source)
    data = _read_model_file(path)
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
    except Exception as err:  # noqa: BLE001 - ValidationError, and UnicodeDecodeError and the
        # like on damaged strings inside an otherwise parsable file
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise ModelLoadError(f"{path} is not a valid ONNX model: {lines[0]}") from err
    return model, hashlib.sha256(data).hexdigest()
