"""What machine and versions a measurement came from: recorded in every benchmark JSON."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any

from . import env

_PACKAGES = ("graphopt", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    from . import _tvm

    features = _tvm.host_cpu_features()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "llvm_cpu": _tvm.host_cpu_name(),
        "simd": sorted(f for f in features if f.startswith(("avx", "fma", "neon", "sve"))),
        "cores": os.cpu_count(),
        "threads": env.num_threads(),
        "spin_us": env.spin_us(),
        "tvm_runtime_env": {
            v.name: os.environ.get(v.name) for v in (env.TVM_NUM_THREADS, env.TVM_SPIN, env.SPIN_US)
        },
        "versions": {p: _version(p) for p in _PACKAGES},
    }
