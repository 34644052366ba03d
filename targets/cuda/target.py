"""NVIDIA GPUs through TVM's CUDA codegen: kernels compiled ahead of time into a fatbin.

One target, `cuda`, with the GPU as an option (`--target-opt gpu=h100`, or `arch=sm_90`);
GPUs differ only in data (SM version), so they share one file and one set of stages. The
library always holds machine code for the arch plus PTX for newer GPUs, never CUDA source:
`export` reads the fatbin back and refuses a library without it (toolchain.py explains how
TVM would otherwise ship source on a machine without a GPU).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from graphopt import _tvm
from graphopt.bundle import installed_runtime, write_bundle
from graphopt.errors import TargetError
from graphopt.target_infra import Availability, Target, register_target
from graphopt.targets.cuda import fatbin, pipeline, toolchain

# SM versions graphopt compiles for: Turing to Blackwell (nvcc 13 dropped everything older).
ARCHES = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_120")
PRECISIONS = ("fp32", "fp16", "bf16")
BF16_ARCHES = ARCHES[ARCHES.index("sm_80") :]  # bf16 tensor cores: Ampere and newer
CUDA_RUNTIME_LIB = "libtvm_runtime_cuda.so"  # TVM's CUDA device API and module loader


@dataclass(frozen=True)
class Gpu:
    arch: str
    about: str


# Names accepted by gpu=.
GPUS: dict[str, Gpu] = {
    "t4": Gpu("sm_75", "Tesla T4 (Turing)"),
    "rtx2080": Gpu("sm_75", "GeForce RTX 2080 (Turing)"),
    "a100": Gpu("sm_80", "A100 (Ampere)"),
    "a10": Gpu("sm_86", "A10 / A10G (Ampere)"),
    "rtx3090": Gpu("sm_86", "GeForce RTX 3090 (Ampere)"),
    "jetson-orin": Gpu("sm_87", "Jetson AGX Orin (Ampere)"),
    "l4": Gpu("sm_89", "L4 (Ada)"),
    "l40s": Gpu("sm_89", "L40S (Ada)"),
    "rtx4090": Gpu("sm_89", "GeForce RTX 4090 (Ada)"),
    "h100": Gpu("sm_90", "H100 (Hopper)"),
    "h200": Gpu("sm_90", "H200 (Hopper)"),
    "b200": Gpu("sm_100", "B200 (Blackwell)"),
    "rtx5090": Gpu("sm_120", "GeForce RTX 5090 (Blackwell)"),
}


@register_target
class Cuda(Target):
    """NVIDIA GPU (CUDA, ahead-of-time fatbin); gpu=h100|a100|l4|t4.. or arch=sm_XX."""

    name = "cuda"

    @dataclass(frozen=True)
    class Options:
        gpu: str = "h100"  # a key of GPUS
        arch: str = ""  # sm_XX, overrides the GPU's
        precision: str = "fp32"  # fp32 | fp16 | bf16 (16-bit storage, fp32 accumulation)
        cuda_graphs: bool = False  # replay `main` as CUDA graphs (cuda-graphs pass)
        ptx: bool = True  # embed PTX beside the machine code (runs on newer GPUs)
        rules: tuple[str, ...] = ()  # schedule-cuda rules (empty: all)
        bundle: bool = True  # add runner + TVM/CUDA runtime libraries (false: model.so only)
        cc: str = "g++"  # host C++ compiler for the runner

        def __post_init__(self) -> None:
            if self.gpu not in GPUS:
                raise TargetError(
                    f"target 'cuda': unknown gpu '{self.gpu}' (gpus: {', '.join(GPUS)})"
                )
            if self.arch and self.arch not in ARCHES:
                raise TargetError(
                    f"target 'cuda': unknown arch '{self.arch}' (arches: {', '.join(ARCHES)})"
                )
            if self.precision not in PRECISIONS:
                raise TargetError(
                    f"target 'cuda': precision={self.precision!r} is not supported "
                    f"(precisions: {', '.join(PRECISIONS)})"
                )
            arch = self.arch or GPUS[self.gpu].arch
            if self.precision == "bf16" and arch not in BF16_ARCHES:
                raise TargetError(
                    f"target 'cuda': precision=bf16 needs sm_80 or newer (Ampere+), not {arch}"
                )

    @classmethod
    def presets(cls) -> dict[str, str]:
        return {f"gpu={name}": f"{g.about}; {g.arch}" for name, g in GPUS.items()}

    @classmethod
    def from_text_options(cls, raw: Mapping[str, str]) -> Target:
        target = super().from_text_options(raw)
        toolchain.nvcc_path()  # fail before compiling, not at the build step
        return target

    @property
    def arch(self) -> str:
        return self.options.arch or GPUS[self.options.gpu].arch

    def tvm_target(self) -> tvm.target.Target:
        return _tvm.make_target(
            {
                "kind": "cuda",
                "arch": self.arch,
                "max_threads_per_block": 1024,
                "max_shared_memory_per_block": 49152,
                "thread_warp_size": 32,
                "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
            }
        )

    def stages(self, tuning_db: Path | None = None) -> dict[str, list[str]]:
        return {
            "legalize": pipeline.legalize_stage(self.options.precision, self.options.rules),
            "schedule": pipeline.schedule_stage(tuning_db, self.options.rules),
            "lower": pipeline.lower_stage(self.options.cuda_graphs),
        }

    def build_context(self):
        """nvcc compiles every kernel into a fatbin for this arch (plus PTX)."""
        return toolchain.fatbin_compiler(self.arch, self.options.ptx)

    def device_kind(self) -> str:
        return "cuda"

    def device(self) -> Any:
        dev = tvm.cuda(0)
        if not _has_gpu() or not dev.exist:
            raise TargetError(
                "target 'cuda' cannot run on this machine (no GPU): run the artifact on a GPU "
                "host (docs/CUDA.md)"
            )
        return dev

    def export(self, executable: Any, path: Path) -> None:
        _tvm.export_library(executable, path)
        fatbin.check_library(path, self.arch)

    def export_bundle(self, directory: Path, manifest: dict[str, Any]) -> None:
        """The runner, TVM's runtime with its CUDA part and the CUDA runtime library (no
        compiler library): the directory runs on a GPU host without Python."""
        if not self.options.bundle:
            return
        if shutil.which(self.options.cc) is None:
            raise TargetError(f"target 'cuda' builds its runner with {self.options.cc}: not found")
        runtime = installed_runtime((CUDA_RUNTIME_LIB,))
        cudart = toolchain.toolkit_cudart(toolchain.nvcc_path())
        manifest["bundle"] = write_bundle(
            directory, manifest, self.options.cc, runtime.platform, runtime,
            (cudart,) if cudart else (),
        )  # fmt: skip

    def availability(self) -> Availability:
        if shutil.which("nvcc") is None:
            return Availability(False, _has_gpu(), "needs nvcc (CUDA toolkit) on PATH")
        if _has_gpu():
            return Availability(True, True, "nvcc and a GPU here")
        return Availability(True, False, "no GPU here: runs on a GPU host")


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()
