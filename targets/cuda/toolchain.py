"""The build machine's CUDA toolchain: nvcc, the stub driver, and the compile callback.

TVM compiles CUDA kernels through the global callback `tvm_callback_cuda_compile` and wraps
the result in a CUDA runtime module from `libtvm_runtime_cuda.so`. That library links the
driver (`libcuda.so.1`); on a machine without a GPU it fails to load and TVM silently ships
CUDA *source*, compiled on the GPU host at load time. So every CUDA build here:

1. loads a stub `libcuda.so.1` (stub/libcuda_stub.c, compiled with gcc into the graphopt cache
   on first use) and then `libtvm_runtime_cuda.so`, unless a real driver already made it load;
2. compiles kernels with nvcc into a fatbin holding sm_XX machine code plus compute_XX PTX
   (forward compatibility), uncompressed so the PTX can be read back and checked.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from graphopt import env
from graphopt.errors import TargetError

CALLBACK = "tvm_callback_cuda_compile"
STUB_SOURCE = "libcuda_stub.c"
STUB_SONAME = "libcuda.so.1"


def nvcc_path() -> str:
    """nvcc on PATH; a one-line TargetError when there is none."""
    path = shutil.which("nvcc")
    if path is None:
        raise TargetError(
            "target 'cuda' needs nvcc (CUDA toolkit 12.x or newer) on PATH to compile GPU "
            "kernels ahead of time; install the toolkit or add its bin/ to PATH"
        )
    return path


def _stub_source() -> bytes:
    return (resources.files("graphopt.targets.cuda") / "stub" / STUB_SOURCE).read_bytes()


def stub_driver() -> Path:
    """The stub libcuda.so.1, built once per source version into <cache>/cuda-stub/."""
    source = _stub_source()
    digest = hashlib.sha256(source).hexdigest()[:12]
    out = env.cache_dir() / "cuda-stub" / digest / STUB_SONAME
    if out.is_file():
        return out
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise TargetError(
            "target 'cuda' on a machine without a GPU needs gcc to build its stub CUDA driver "
            "(apt-get install gcc)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, lib = Path(tmp) / STUB_SOURCE, Path(tmp) / STUB_SONAME
        src.write_bytes(source)
        soname = f"-Wl,-soname,{STUB_SONAME}"
        cmd = [gcc, "-shared", "-fPIC", "-O1", soname, "-o", str(lib), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["gcc failed"])[-1]
            raise TargetError(f"building the stub CUDA driver failed: {last}")
        os.replace(lib, out)
    return out


def toolkit_cudart(nvcc: str) -> Path | None:
    """libcudart.so.13 (or .12) of the CUDA toolkit: beside nvcc, $CUDA_HOME or
    /usr/local/cuda (nvcc on PATH may be a wrapper script elsewhere)."""
    roots = [Path(nvcc).resolve().parent.parent]
    roots += [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    roots.append(Path("/usr/local/cuda"))
    for root in roots:
        for folder in ("lib64", "lib", "targets/x86_64-linux/lib"):
            for name in ("libcudart.so.13", "libcudart.so.12"):
                if (root / folder / name).is_file():
                    return (root / folder / name).resolve()
    return None


def ensure_cuda_runtime() -> None:
    """Make TVM's CUDA runtime module available (stub driver where there is no GPU)."""
    import tvm_ffi
    from tvm.base import _LOADED_LIBS

    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True):
        return
    nvcc = nvcc_path()
    if not _have_driver():
        ctypes.CDLL(str(stub_driver()), mode=ctypes.RTLD_GLOBAL)
    cudart = toolkit_cudart(nvcc)
    if cudart is not None:
        ctypes.CDLL(str(cudart), mode=ctypes.RTLD_GLOBAL)
    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(
            str(runtime_dir / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL
        )
    except OSError as err:
        raise TargetError(f"cannot load TVM's CUDA runtime: {str(err).splitlines()[0]}") from err


def _have_driver() -> bool:
    try:
        ctypes.CDLL(STUB_SONAME, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def gencode_flags(arch: str, ptx: bool) -> list[str]:
    """nvcc flags for sm_XX machine code, plus compute_XX PTX when `ptx`."""
    number = arch.removeprefix("sm_")
    flags = ["-gencode", f"arch=compute_{number},code=sm_{number}"]
    if ptx:
        flags += ["-gencode", f"arch=compute_{number},code=compute_{number}"]
    return flags


def nvcc_error(message: str) -> str:
    """The first error line of nvcc's output in TVM's message (which starts with the source)."""
    output = message.split("\nCompilation error:\n", 1)[-1]
    lines = [ln.strip() for ln in output.splitlines() if "error" in ln.lower()]
    return (lines or [output.strip().splitlines()[-1] if output.strip() else "no output"])[0]


@contextlib.contextmanager
def fatbin_compiler(arch: str, ptx: bool = True) -> Iterator[None]:
    """While active, TVM compiles CUDA kernels with nvcc into fatbins for `arch`."""
    import tvm_ffi
    from tvm.support import nvcc

    nvcc_path()
    ensure_cuda_runtime()
    previous = tvm_ffi.get_global_func(CALLBACK, allow_missing=True)
    flags = gencode_flags(arch, ptx)

    def compile_fatbin(code: str) -> bytes:
        try:
            return nvcc.compile_cuda(
                code, target_format="fatbin", arch=flags, options=["--no-compress"],
                compiler="nvcc",
            )  # fmt: skip
        except RuntimeError as err:
            failed.append(TargetError(f"nvcc failed for {arch}: {nvcc_error(str(err))}"))
            raise failed[-1] from err

    failed: list[TargetError] = []  # TVM's FFI re-raises a callback's error as RuntimeError
    tvm_ffi.register_global_func(CALLBACK, compile_fatbin, override=True)
    try:
        yield
    except Exception as err:
        if failed:
            raise failed[-1] from err
        raise
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(CALLBACK, previous, override=True)
