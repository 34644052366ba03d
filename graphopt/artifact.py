"""A compiled artifact: a directory with the model library and manifest.json.

This module needs only numpy and the TVM runtime, never graphopt's compiler stack (frontend,
passes, onnx), so deployments can run artifacts with `graphopt.load(dir).run(inputs)`.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact_dims import dim_ranges, dims_problems, shape_problems, spec_dims_problem
from .errors import ArtifactError, InputError

MANIFEST = "manifest.json"
LIBRARY = "model.so"
FORMAT_PREFIX = "graphopt-artifact/"
FORMAT = FORMAT_PREFIX + "1"
# What graphopt wrote before manifests listed their files (x86 artifacts, ARM bundles).
LEGACY_FILES = (MANIFEST, LIBRARY, "run", "io.txt", "lib")
PSEUDO_FILESYSTEMS = ("proc", "sys", "dev")
HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class IOSpec:
    """An input or output; a symbolic dim is a str (its name, range in the manifest's `dims`)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> IOSpec:
        shape = tuple(x if isinstance(x, str) else int(x) for x in d["shape"])
        return IOSpec(str(d["name"]), shape, str(d["dtype"]))


class Artifact:
    """A loaded artifact; `run` checks input names, shapes and dtypes before calling the model."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.inputs = [IOSpec.from_json(d) for d in self.manifest["inputs"]]
        self.outputs = [IOSpec.from_json(d) for d in self.manifest["outputs"]]
        self.dims = dim_ranges(self.manifest)
        self._vm: Any = None
        self._input_tensors: list[Any] = []  # run's device copies of the last inputs

    @property
    def library_path(self) -> Path:
        return self.directory / self.manifest.get("library", LIBRARY)

    def _machine(self) -> Any:
        if self._vm is None:
            from tvm.runtime.vm import VirtualMachine

            from ._tvm import load_module

            try:
                lib = load_module(self.library_path, self._native_log())
                self._vm = VirtualMachine(lib, self.device())
            except Exception as err:  # noqa: BLE001 - TVM raises several types here
                reason = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
                raise ArtifactError(f"cannot load {self.library_path}: {reason}") from err
        return self._vm

    def _native_log(self) -> Path | None:
        """Where TVM's runtime log lines go at load: the artifact's `tvm.log` (written at
        compile) if it may be appended to, else nowhere (a read-only deployment)."""
        from ._tvm import NATIVE_LOG

        log = self.directory / NATIVE_LOG
        return log if os.access(log, os.W_OK) else None

    def example_sizes(self) -> dict[str, int]:
        """A size inside each symbolic dim's range, for random inputs (bench, report)."""
        from .inputs import SYMBOLIC_SIZE

        return {n: max(lo, min(hi, SYMBOLIC_SIZE)) for n, (lo, hi) in self.dims.items()}

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
        """Arrays in declaration order; one InputError lists every problem found (a symbolic
        dim must be within its range and the same on every input that has it)."""
        problems = []
        expected = {s.name for s in self.inputs}
        for name in sorted(set(inputs) - expected):
            problems.append(f"unknown input '{name}'")
        arrays, sizes = [], {}  # sizes: symbolic dim -> the size these inputs give it
        for spec in self.inputs:
            if spec.name not in inputs:
                problems.append(f"missing input '{spec.name}' {_fmt(spec)}")
                continue
            arr = np.asarray(inputs[spec.name])
            if arr.dtype != np.dtype(spec.dtype):
                problems.append(f"input '{spec.name}' has dtype {arr.dtype}, expected {spec.dtype}")
            problems += shape_problems(spec, tuple(arr.shape), self.dims, sizes)
            arrays.append(np.asarray(arr, order="C"))  # ascontiguousarray makes 0-d 1-d
        if problems:
            raise InputError("; ".join(problems))
        return arrays

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run once; returns outputs keyed by the model's output names."""
        arrays = self.check_inputs(inputs)
        main = self._machine()["main"]
        outs = flatten_outputs(main(*self._device_inputs(arrays)))
        return {spec.name: out for spec, out in zip(self.outputs, outs)}

    def _device_inputs(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """The inputs as tensors on the model's device (a GPU for `cuda` artifacts): the
        previous call's tensors, copied into, where shapes and dtypes match: allocating a
        new 600 KB tensor each call made MobileNetV2's calls 1% slower on 2 cores."""
        import tvm.runtime

        kept = self._input_tensors
        same = len(kept) == len(arrays) and all(
            tuple(t.shape) == a.shape and str(t.dtype) == str(a.dtype) for t, a in zip(kept, arrays)
        )
        if not same:
            dev = self.device()
            self._input_tensors = [tvm.runtime.tensor(a, dev) for a in arrays]
            return self._input_tensors
        for tensor, array in zip(kept, arrays):
            tensor.copyfrom(array)
        return kept

    def runner(self, inputs: Mapping[str, Any]):
        """A no-argument callable that runs the model on these inputs (for timing loops).

        The inputs are copied into TVM tensors once, here: onnxruntime reads numpy inputs in
        place, so copying them on every call would time a copy the other side does not make.
        """
        import tvm.runtime

        dev = self.device()
        tensors = [tvm.runtime.tensor(a, dev) for a in self.check_inputs(inputs)]
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
    """The validated manifest of an artifact: schema, library inside it, library hash."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a graphopt artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: unknown artifact format {found!r}")
    problems = _schema_problems(manifest)
    if problems:
        raise ArtifactError(f"{path}: invalid manifest: {'; '.join(problems)}")
    _check_library(directory, manifest)
    return manifest


def _schema_problems(manifest: Mapping[str, Any]) -> list[str]:
    """What is missing or mistyped, so a hand-edited manifest fails with a line, not a trace."""
    problems = []
    if not isinstance(manifest.get("library", LIBRARY), str):
        problems.append("'library' must be a string")
    sha = manifest.get("library_sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in HEX for c in sha)):
        problems.append(
            "'library_sha256' is missing or not a sha256 (written by an older graphopt? "
            "compile the model again)"
        )
    target = manifest.get("target")
    if not (isinstance(target, dict) and isinstance(target.get("name"), str)):
        problems.append("'target' must be an object with a 'name'")
    for key in ("inputs", "outputs"):
        specs = manifest.get(key)
        if not isinstance(specs, list):
            problems.append(f"'{key}' must be a list")
            continue
        dims = manifest.get("dims") if isinstance(manifest.get("dims"), dict) else {}
        problems += [
            f"{key}[{i}]: {p}"
            for i, s in enumerate(specs)
            if (p := _spec_problem(s, dims, key == "outputs"))
        ]
    problems += dims_problems(manifest)
    if isinstance(manifest.get("outputs"), list) and not manifest["outputs"]:
        problems.append("'outputs' is empty")
    return problems


def _spec_problem(spec: Any, dims: Mapping[str, Any], output: bool) -> str | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return "must be an object with a string 'name'"
    shape = spec.get("shape")
    if not isinstance(shape, list):
        return "'shape' must be a list of non-negative integers"
    problem = spec_dims_problem(shape, dims, output)
    if problem:
        return problem
    try:
        np.dtype(spec.get("dtype"))
    except TypeError:
        return f"unknown dtype {spec.get('dtype')!r}"
    return None if isinstance(spec.get("dtype"), str) else "'dtype' must be a string"


def _check_library(directory: Path, manifest: Mapping[str, Any]) -> None:
    """The library must lie inside the artifact and be the file that was compiled: native
    code from elsewhere, or a damaged library (truncated: SIGBUS in the loader), never loads."""
    name = manifest.get("library", LIBRARY)
    root = directory.resolve()
    lib = (directory / name).resolve()
    if Path(name).is_absolute() or root not in lib.parents:
        raise ArtifactError(f"{directory}: library path {name!r} leads outside the artifact")
    if not lib.is_file():
        raise ArtifactError(f"{directory}: library {name} is missing")
    if sha256_file(lib) != manifest["library_sha256"]:
        raise ArtifactError(
            f"{directory}: {name} does not match the sha256 in {MANIFEST} (damaged or replaced; "
            "compile the model again)"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_artifact(directory: Path) -> bool:
    """A directory whose manifest carries graphopt's format marker (any version)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    return isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX)


def foreign_files(directory: Path) -> list[str]:
    """Entries of an artifact directory that graphopt did not write (a user's own files).

    The manifest lists what graphopt wrote (`files`); older manifests, without the list, are
    taken to hold graphopt's fixed names.
    """
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        manifest = {}
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(listed, list) and all(isinstance(n, str) for n in listed):
        ours = set(listed)
    else:
        library = manifest.get("library") if isinstance(manifest, dict) else None
        ours = {*LEGACY_FILES, *([library] if isinstance(library, str) else [])}
    return sorted(p.name for p in directory.iterdir() if p.name not in ours)


def load(directory: str | Path) -> Artifact:
    """Load a compiled artifact directory (runtime only)."""
    return Artifact(directory)


def _fmt(spec: IOSpec) -> str:
    return f"{spec.dtype}[{', '.join(str(d) for d in spec.shape)}]"


# --------------------------------------------------------------------------------------------
# Writing: `compile -o DIR` never loses a user's data


def output_path(out: str | Path) -> Path:
    """The directory `-o` names, as an absolute path with symlinks resolved.

    A symlink to a directory is followed (the link stays, its target is replaced); `-o .`
    and the directories above the current one are refused, since they cannot be swapped.
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ArtifactError(f"output path {out} is a broken symlink")
    final = Path(os.path.realpath(out))
    if final.parent == final:
        raise ArtifactError(f"cannot write an artifact to {final}")
    if final.parts[1] in PSEUDO_FILESYSTEMS:
        raise ArtifactError(f"cannot write an artifact under /{final.parts[1]}: {out}")
    cwd = Path.cwd().resolve()
    if final == cwd or final in cwd.parents:
        raise ArtifactError(
            f"output {out} is the current directory or one above it; name another directory"
        )
    return final


def writable_parent(out: str | Path) -> None:
    """Fail before any work if the artifact cannot be written where asked.

    Missing parent directories are fine (they are created, like `mkdir -p`); a file in the
    way, a foreign non-empty directory or no write permission are errors.
    """
    final = output_path(out)
    parent = final.parent
    if final.exists() and not final.is_dir():
        raise ArtifactError(f"output path exists and is not a directory: {out}")
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ArtifactError(f"cannot create {out}: {blocking} is a file, not a directory")
    if final.is_dir() and any(final.iterdir()) and not is_artifact(final):
        raise ArtifactError(
            f"output directory {out} is not empty and not a graphopt artifact (no {MANIFEST} "
            f"with format {FORMAT}); refusing to replace it"
        )
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise ArtifactError(f"cannot write to {existing} (permission denied)")


class AtomicDirectory:
    """Write into a temporary sibling directory; on success swap it into place, else remove it.

    A reader never sees a half-written artifact: the old one stays until the new one is whole,
    and the swap is one atomic exchange. Files in the old artifact that graphopt did not write
    are carried over (hard links); leftovers of an interrupted compile are removed first. The
    manifest gets the list of files written and the library's sha256 (checked at load).
    """

    def __init__(self, final: str | Path) -> None:
        self.final = output_path(final)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            clean_leftovers(self.final)
            self.tmp = self.final.with_name(
                f".{self.final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            )
            self.tmp.mkdir(0o777)  # the umask applies, as for any directory a user makes
        except OSError as err:
            raise ArtifactError(f"cannot write {self.final}: {err.strerror or err}") from err
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self._commit()
        except ArtifactError:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        except OSError as err:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise ArtifactError(f"cannot write {self.final}: {err.strerror or err}") from err

    def _commit(self) -> None:
        assert self.tmp is not None
        seal(self.tmp)
        if not self.final.is_dir():
            os.rename(self.tmp, self.final)
            return
        if not is_artifact(self.final) and any(self.final.iterdir()):
            raise ArtifactError(f"{self.final} is no longer a graphopt artifact; not replaced")
        keep = foreign_files(self.final)
        clash = sorted(set(keep) & {p.name for p in self.tmp.iterdir()})
        if clash:
            raise ArtifactError(
                f"{self.final} holds files graphopt did not write with the names of new artifact "
                f"files: {', '.join(clash)}; move them away first"
            )
        for name in keep:
            _link_tree(self.final / name, self.tmp / name)
        _exchange(self.tmp, self.final)
        shutil.rmtree(self.tmp, ignore_errors=True)  # now the old artifact


def seal(directory: Path) -> None:
    """Record in the manifest what graphopt wrote and the library's sha256."""
    path = directory / MANIFEST
    if not path.is_file():
        return
    manifest = json.loads(path.read_text())
    library = directory / manifest.get("library", LIBRARY)
    manifest["files"] = sorted(p.name for p in directory.iterdir())
    if library.is_file():
        manifest["library_sha256"] = sha256_file(library)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, where links fail) a file or tree: the old directory keeps its copy
    until the swap is done, so a crash in between loses nothing."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d, follow_symlinks=False)
        except OSError:
            shutil.copy2(s, d, follow_symlinks=False)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    else:
        link(str(src), str(dst))


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (renameat2 RENAME_EXCHANGE), else rename via a backup."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) == 0:
            return
    backup = b.with_name(f".{b.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(b, backup)
    os.rename(a, b)
    os.rename(backup, a)


def clean_leftovers(final: Path) -> list[str]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` left by interrupted compiles (not by running ones).

    If the artifact itself is missing while a backup of it exists (killed between the two
    renames of the fallback swap), the backup is put back instead.
    """
    removed = []
    for entry in sorted(final.parent.glob(f".{glob.escape(final.name)}.*-*")):
        kind, _, rest = entry.name[len(final.name) + 2 :].partition("-")
        if kind not in ("tmp", "old") or not entry.is_dir() or entry.is_symlink():
            continue
        pid = rest.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if kind == "old" and not final.exists() and is_artifact(entry):
            os.rename(entry, final)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
