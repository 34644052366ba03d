"""Deployable bundles for boards without Python: runner program, TVM runtime, io.txt.

A bundle is an artifact directory (model.so + manifest.json) plus what the board needs to run
it: `run` (graphopt/runner/run.cc, cross-built), `lib/libtvm_runtime.so` and `lib/libtvm_ffi.so`
(taken from the apache-tvm / apache-tvm-ffi wheels for the board's platform, at the versions
that compiled the model), and `io.txt` (input/output names, dtypes and shapes for the runner).

The wheels are downloaded once with pip into the graphopt cache; the runner is built once per
(compiler, runtime, source) and copied into every bundle.
"""

from __future__ import annotations

import hashlib
import os
import platform as host_platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import env
from .errors import TargetError

RUNNER = "run"
IO_SPEC = "io.txt"
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
QEMU = "qemu-aarch64"
QEMU_SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's aarch64 libc, for qemu -L


class BundleError(TargetError):
    """The runtime for the board cannot be fetched, or the runner cannot be built."""


@dataclass(frozen=True)
class Runtime:
    """The TVM runtime for one platform, unpacked from its wheels: lib/ and include/."""

    root: Path
    platform: str

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def include(self) -> Path:
        return self.root / "include"


def runtime_versions() -> tuple[str, str]:
    """apache-tvm and apache-tvm-ffi versions of this install: the board's must match them."""
    import tvm
    import tvm_ffi

    return tvm.__version__, tvm_ffi.__version__


def _wheel(wheels: Path, project: str, version: str, arch: str) -> Path | None:
    found = sorted(wheels.glob(f"{project}-{version}-*{arch}*.whl"))
    return found[0] if found else None


def fetch_runtime(platform: str = "manylinux_2_28_aarch64") -> Runtime:
    """The board runtime for `platform`, downloading the wheels with pip on first use.

    Offline machines: put the two wheels in `<cache>/wheels/` beforehand.
    """
    tvm_version, ffi_version = runtime_versions()
    root = env.cache_dir() / "runtime" / f"tvm-{tvm_version}-ffi-{ffi_version}-{platform}"
    if all((root / "lib" / name).is_file() for name in RUNTIME_LIBS):
        return Runtime(root, platform)
    wheels = env.cache_dir() / "wheels"
    arch = platform.split("_", 3)[-1]  # manylinux_2_28_aarch64 -> aarch64
    wanted = {"apache_tvm": tvm_version, "apache_tvm_ffi": ffi_version}
    if any(_wheel(wheels, p, v, arch) is None for p, v in wanted.items()):
        _download_wheels(wheels, platform, tvm_version, ffi_version)
    tvm_whl = _wheel(wheels, "apache_tvm", tvm_version, arch)
    ffi_whl = _wheel(wheels, "apache_tvm_ffi", ffi_version, arch)
    if tvm_whl is None or ffi_whl is None:
        raise BundleError(f"pip did not leave the {arch} TVM wheels in {wheels}")

    def unpack(tmp: Path) -> None:
        _unpack(tvm_whl, tmp, "tvm/lib/")
        _unpack(ffi_whl, tmp, "tvm_ffi/lib/", "tvm_ffi/include/")

    _publish(root, unpack)
    return Runtime(root, platform)


def installed_runtime(extra: tuple[str, ...] = ()) -> Runtime:
    """This machine's own TVM runtime (the installed apache-tvm / apache-tvm-ffi packages) with
    the `extra` libraries of tvm/lib beside it (e.g. libtvm_runtime_cuda.so), copied into the
    cache: for bundles that run on this CPU architecture (the CUDA target's, on x86-64 GPU
    hosts). The compiler library is never part of it."""
    import tvm
    import tvm_ffi

    tvm_lib = Path(tvm.__file__).parent / "lib"
    ffi_root = Path(tvm_ffi.__file__).parent
    tvm_version, ffi_version = runtime_versions()
    arch = host_platform.machine()
    name = f"tvm-{tvm_version}-ffi-{ffi_version}-installed-{arch}-{'-'.join(extra) or 'base'}"
    root = env.cache_dir() / "runtime" / name
    wanted = [*RUNTIME_LIBS, *extra]
    if all((root / "lib" / n).is_file() for n in wanted) and (root / "include").is_dir():
        return Runtime(root, arch)

    def copy(tmp: Path) -> None:
        (tmp / "lib").mkdir()
        for lib in wanted:
            src = ffi_root / "lib" / lib if lib == "libtvm_ffi.so" else tvm_lib / lib
            if not src.is_file():
                raise BundleError(f"the installed TVM has no {lib} ({src})")
            shutil.copy2(src, tmp / "lib" / lib)
        shutil.copytree(ffi_root / "include", tmp / "include")

    _publish(root, copy)
    return Runtime(root, arch)


def _publish(root: Path, fill) -> None:
    """Fill a fresh directory beside `root`, then rename it into place: a cache entry is
    whole or absent, and of two processes filling it at once the first rename wins."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=root.parent))
    try:
        fill(tmp)
        try:
            os.replace(tmp, root)
        except OSError:  # another process published it first
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _download_wheels(wheels: Path, platform: str, tvm_version: str, ffi_version: str) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
        "--platform", platform, "-d", str(wheels),
        f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}",
    ]  # fmt: skip
    print(f"downloading the {platform} TVM runtime (about 100 MB, once) into {wheels}",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(cmd, 1, "", "pip took more than 15 minutes")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise BundleError(
            f"cannot download the {platform} TVM runtime wheels (apache-tvm=={tvm_version}, "
            f"apache-tvm-ffi=={ffi_version}): {tail}; offline, put both wheels in {wheels}"
        )


def _unpack(wheel: Path, dest: Path, libs: str, headers: str = "") -> None:
    """The runtime libraries under `libs` into dest/lib, the headers under `headers` into
    dest/include (keeping their tree)."""
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            name = Path(member).name
            if member.startswith(libs) and name in RUNTIME_LIBS:
                target = dest / "lib" / name
            elif headers and member.startswith(headers) and not member.endswith("/"):
                target = dest / "include" / member[len(headers) :]
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(member))


def runner_source() -> dict[str, bytes]:
    """The runner's C++ sources, shipped as package data."""
    folder = resources.files("graphopt") / "runner"
    return {name: (folder / name).read_bytes() for name in ("run.cc", "npy.h")}


def build_runner(cc: str, runtime: Runtime) -> Path:
    """The runner executable for `runtime`, cross-built with `cc` (cached)."""
    sources = runner_source()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(
        b"".join([*sources.values(), cc.encode(), version.encode(), str(runtime.root).encode()])
    ).hexdigest()[:16]
    out = env.cache_dir() / "runner" / digest / RUNNER
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        for name, data in sources.items():
            (Path(tmp) / name).write_bytes(data)
        exe = Path(tmp) / RUNNER
        # --no-as-needed: the runner calls nothing in libtvm_runtime directly, but loading it
        # registers the Relax VM and the .so module loader.
        cmd = [
            cc, "-std=c++17", "-O2", "-I", str(runtime.include), str(Path(tmp) / "run.cc"),
            "-o", str(exe), "-L", str(runtime.lib), "-Wl,--no-as-needed", "-ltvm_runtime",
            "-ltvm_ffi", "-Wl,--as-needed", "-ldl", "-Wl,-rpath,$ORIGIN/lib",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BundleError(f"building the runner with {cc} failed:\n{proc.stderr.strip()}")
        os.replace(exe, out)
    return out


def io_spec_text(manifest: dict[str, Any]) -> str:
    """io.txt: "device NAME", then "input|output DESCR NDIM D0 .. NAME" per line (numpy dtype
    strings); the runner opens the device the manifest names. A symbolic input dim is
    `name=min..max` (the runner checks the range), a symbolic output dim `?`."""
    dims = manifest.get("dims") or {}
    lines = [f"device {manifest.get('target', {}).get('device', 'cpu')}"]
    for kind in ("input", "output"):
        for spec in manifest[f"{kind}s"]:
            shape = [_dim_token(d, dims) for d in spec["shape"]]
            descr = np.dtype(spec["dtype"]).str
            lines.append(" ".join([kind, descr, str(len(shape)), *shape, spec["name"]]))
    return "\n".join(lines) + "\n"


def _dim_token(dim: int | str, dims: dict[str, Any]) -> str:
    if not isinstance(dim, str):
        return str(int(dim)) if int(dim) >= 0 else "?"
    r = dims.get(dim)
    return f"{dim}={r['min']}..{r['max']}" if r is not None else "?"


_VERSION = re.compile(rb"(GLIBC|GLIBCXX)_(\d+(?:\.\d+)+)")


def required_versions(paths: list[Path], objdump: str | None) -> dict[str, str]:
    """Newest GLIBC_ / GLIBCXX_ symbol versions the files need (`objdump -T`).

    Without an objdump for the board, the version strings are read from the files directly
    (the same names, from the dynamic string table).
    """
    found: dict[str, tuple[int, ...]] = {}
    for path in paths:
        if objdump:
            text = subprocess.run(
                [objdump, "-T", str(path)], capture_output=True, check=True
            ).stdout
        else:
            text = path.read_bytes()
        for lib, version in _VERSION.findall(text):
            key = lib.decode().lower()
            found[key] = max(found.get(key, ()), tuple(int(x) for x in version.split(b".")))
    return {k: ".".join(map(str, v)) for k, v in sorted(found.items())}


def write_bundle(
    directory: Path,
    manifest: dict[str, Any],
    cc: str,
    platform: str,
    runtime: Runtime | None = None,
    extra_libs: tuple[Path, ...] = (),
) -> dict:
    """Add runner, runtime libraries and io.txt to an artifact directory; returns the
    manifest's "bundle" section. `runtime` defaults to the wheels for `platform`;
    `extra_libs` (e.g. the CUDA runtime) go into lib/ beside the runtime's own libraries."""
    runtime = runtime or fetch_runtime(platform)
    runner = build_runner(cc, runtime)
    shutil.copy2(runner, directory / RUNNER)
    (directory / "lib").mkdir(exist_ok=True)
    libs = [runtime.lib / p.name for p in sorted(runtime.lib.glob("*.so*"))]
    for path in [*libs, *extra_libs]:
        shutil.copy2(path, directory / "lib" / path.name)
    names = sorted({p.name for p in [*libs, *extra_libs]})
    (directory / IO_SPEC).write_text(io_spec_text(manifest))
    objdump = _sibling_tool(cc, "objdump")
    files = [directory / RUNNER, directory / manifest["library"]]
    files += [directory / "lib" / n for n in names]
    tvm_version, ffi_version = runtime_versions()
    return {
        "runner": RUNNER,
        "libraries": [f"lib/{n}" for n in names],
        "io_spec": IO_SPEC,
        "runtime": {"apache-tvm": tvm_version, "apache-tvm-ffi": ffi_version, "wheel": platform},
        "requires": required_versions(files, objdump),
        "usage": f"./{RUNNER} {manifest['library']} inputs.npz outputs.npz",
    }


def _sibling_tool(cc: str, tool: str) -> str | None:
    """aarch64-linux-gnu-g++ -> aarch64-linux-gnu-objdump, if that exists."""
    path = shutil.which(cc)
    if path is None:
        return None
    name = Path(path).name
    prefix = name[: name.rfind("-") + 1] if "-" in name else ""
    return shutil.which(str(Path(path).with_name(prefix + tool)))


def run_emulated(
    directory: Path, inputs: dict[str, np.ndarray], cpu: str = "max"
) -> dict[str, np.ndarray]:
    """Run a bundle's runner under qemu-aarch64 (a correctness check: emulated times mean
    nothing). `cpu` is qemu's -cpu: cortex-a53 rejects instructions that core lacks."""
    if shutil.which(QEMU) is None or not QEMU_SYSROOT.is_dir():
        raise BundleError(
            f"running an aarch64 bundle here needs {QEMU} and {QEMU_SYSROOT}: "
            "apt-get install qemu-user g++-aarch64-linux-gnu"
        )
    return run_bundle(directory, inputs, (QEMU, "-cpu", cpu, "-L", str(QEMU_SYSROOT)))


def run_bundle(
    directory: Path, inputs: dict[str, np.ndarray], prefix: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Run a bundle's own runner on `inputs` (natively, or under `prefix`, an emulator) and
    return its outputs: the path without Python's TVM, as on the device."""
    directory = Path(directory)
    if not (directory / RUNNER).is_file():
        raise BundleError(f"{directory} has no runner (compiled with --target-opt bundle=false?)")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(src, **inputs)
        cmd = [*prefix, str(directory / RUNNER), str(directory / "model.so"), str(src), str(dst)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rc = proc.returncode
            why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
            last = (proc.stderr.strip().splitlines() or [""])[-1]
            how = f" under {' '.join(prefix[:3])}" if prefix else ""
            raise BundleError(f"runner{how} failed ({why}): {last}".rstrip(": "))
        with np.load(dst) as result:
            return {name: result[name] for name in result.files}


def foreign_arch(manifest: dict[str, Any]) -> str | None:
    """The artifact's CPU architecture when it is not this machine's (None: runs here)."""
    triple = str(manifest.get("target", {}).get("options", {}).get("triple", ""))
    arch = {"arm64": "aarch64"}.get(triple.split("-")[0], triple.split("-")[0])
    host = {"arm64": "aarch64", "amd64": "x86_64"}.get(host_platform.machine().lower())
    host = host or host_platform.machine().lower()
    return arch if arch and arch != host else None
