"""A compiled artifact: a directory with the model library and manifest.json.

This module needs only numpy and the TVM runtime, never graphopt's compiler stack (frontend,
passes, onnx), so deployments can run artifacts with `graphopt.load(dir).run(inputs)`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, InputError

MANIFEST = "manifest.json"
LIBRARY = "model.so"
FORMAT = "graphopt-artifact/1"


@dataclass(frozen=True)
class IOSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> IOSpec:
        return IOSpec(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


class Artifact:
    """A loaded artifact; `run` checks input names, shapes and dtypes before calling the model."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.inputs = [IOSpec.from_json(d) for d in self.manifest["inputs"]]
        self.outputs = [IOSpec.from_json(d) for d in self.manifest["outputs"]]
        self._vm: Any = None

    @property
    def library_path(self) -> Path:
        return self.directory / self.manifest.get("library", LIBRARY)

    def _machine(self) -> Any:
        if self._vm is None:
            import tvm.runtime
            from tvm.runtime.vm import VirtualMachine

            try:
                lib = tvm.runtime.load_module(str(self.library_path))
                self._vm = VirtualMachine(lib, self.device())
            except Exception as err:  # noqa: BLE001 - TVM raises several types here
                reason = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
                raise ArtifactError(f"cannot load {self.library_path}: {reason}") from err
        return self._vm

    def device(self) -> Any:
        """The device the manifest's target names (`target.device`; artifacts without it: cpu)."""
        import tvm.runtime

        kind = str(self.manifest.get("target", {}).get("device", "cpu"))
        try:
            return tvm.runtime.device(kind, 0)
        except Exception as err:  # noqa: BLE001 - TVM raises ValueError or its own error
            raise ArtifactError(
                f"{self.directory}: unknown device '{kind}' in the manifest"
            ) from err

    def check_inputs(self, inputs: Mapping[str, Any]) -> list[np.ndarray]:
        """Arrays in declaration order; one InputError lists every problem found."""
        problems = []
        expected = {s.name for s in self.inputs}
        for name in sorted(set(inputs) - expected):
            problems.append(f"unknown input '{name}'")
        arrays = []
        for spec in self.inputs:
            if spec.name not in inputs:
                problems.append(f"missing input '{spec.name}' {_fmt(spec)}")
                continue
            arr = np.asarray(inputs[spec.name])
            if arr.dtype != np.dtype(spec.dtype):
                problems.append(f"input '{spec.name}' has dtype {arr.dtype}, expected {spec.dtype}")
            if tuple(arr.shape) != spec.shape:
                problems.append(
                    f"input '{spec.name}' has shape {list(arr.shape)}, expected {list(spec.shape)}"
                )
            arrays.append(np.asarray(arr, order="C"))  # ascontiguousarray makes 0-d 1-d
        if problems:
            raise InputError("; ".join(problems))
        return arrays

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run once; returns outputs keyed by the model's output names."""
        arrays = self.check_inputs(inputs)
        outs = call_vm(self._machine(), arrays)
        return {spec.name: out for spec, out in zip(self.outputs, outs)}

    def runner(self, inputs: Mapping[str, Any]):
        """A no-argument callable that runs the model on these inputs (for timing loops).

        The inputs are copied into TVM tensors once, here: onnxruntime reads numpy inputs in
        place, so copying them on every call would time a copy the other side does not make.
        """
        import tvm.runtime

        tensors = [tvm.runtime.tensor(a) for a in self.check_inputs(inputs)]
        main = self._machine()["main"]
        return lambda: flatten_outputs(main(*tensors))

    def __repr__(self) -> str:
        return f"Artifact({str(self.directory)!r}, target={self.manifest['target']['name']})"


def call_vm(vm: Any, arrays: Sequence[np.ndarray], tensor: Any = None) -> list[np.ndarray]:
    """Run `main` on numpy arrays; outputs come back flat, as numpy, in order."""
    if tensor is None:
        import tvm.runtime

        tensor = tvm.runtime.tensor
    result = vm["main"](*[tensor(a) for a in arrays])
    return flatten_outputs(result)


def flatten_outputs(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(flatten_outputs(item))
    return out


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a graphopt artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from err
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unknown artifact format {manifest.get('format')!r}")
    if not (directory / manifest.get("library", LIBRARY)).is_file():
        raise ArtifactError(f"{directory}: library {manifest.get('library')} is missing")
    return manifest


def load(directory: str | Path) -> Artifact:
    """Load a compiled artifact directory (runtime only)."""
    return Artifact(directory)


def _fmt(spec: IOSpec) -> str:
    return f"{spec.dtype}{list(spec.shape)}"


def writable_parent(out: Path) -> None:
    """Fail before any work if the artifact cannot be written where asked.

    Missing parent directories are fine (they are created, like `mkdir -p`); a file in the
    way, a foreign non-empty directory or no write permission are errors.
    """
    parent = out.resolve().parent
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path exists and is not a directory: {out}")
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ArtifactError(f"cannot create {out}: {blocking} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ArtifactError(f"output directory {out} is not empty and not a graphopt artifact")
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise ArtifactError(f"cannot write to {existing} (permission denied)")


class AtomicDirectory:
    """Write into a temporary sibling directory; on success swap it into place, else remove it.

    A reader never sees a half-written artifact: the old one stays until the new one is whole.
    """

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
