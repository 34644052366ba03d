"""aarch64 boards (Raspberry Pi, RK3588, Jetson, Graviton): cross-compiled, deployed as a bundle.

One target, `arm`, and the board as an option (`--target-opt board=rpi4`): boards differ only
in data (LLVM CPU name, core count), so they share one file, one set of stages and one option
list; `mcpu`/`mattr` override the board's CPU and add features (`mattr=+dotprod`).

The graph passes and the CPU stages are the x86 target's (same legalization, `schedule-cpu`
for NEON: 4 fp32 lanes, 32 registers, and the same lowering), so whatever works for x86 (int8
included) works here. The library is built with the cross compiler; `export_bundle` adds the
runner and the aarch64 TVM runtime so the output directory runs on a board without Python.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from graphopt import _tvm
from graphopt.bundle import QEMU, QEMU_SYSROOT, write_bundle
from graphopt.errors import TargetError
from graphopt.target_infra import Availability, Target, register_target
from graphopt.targets.cpu import lowering as cpu_lowering
from graphopt.targets.cpu.pipeline import CPU_LEGALIZE, CPU_LOWER, cpu_schedule_stage
from graphopt.targets.cpu.sparse.rules import sparsify_item

DEFAULT_CC = "aarch64-linux-gnu-g++"
CC_PACKAGE = "g++-aarch64-linux-gnu"


@dataclass(frozen=True)
class Board:
    mcpu: str  # LLVM CPU name ("" = generic armv8-a + NEON)
    cores: int
    about: str


# Names accepted by board=: cores and the boards built on them. LLVM derives the features from
# the CPU name (cortex-a76 and neoverse-n1 have dotprod and fp16; a53/a72 do not; neoverse-v1
# and -n2 add bf16 and fp16fml, the 16-bit multiply-adds into fp32).
BOARDS: dict[str, Board] = {
    "generic": Board("", 4, "any ARMv8-A with NEON"),
    "cortex-a53": Board("cortex-a53", 4, "ARMv8-A, NEON"),
    "cortex-a55": Board("cortex-a55", 4, "ARMv8.2-A, NEON, dotprod, fp16"),
    "cortex-a72": Board("cortex-a72", 4, "ARMv8-A, NEON"),
    "cortex-a76": Board("cortex-a76", 4, "ARMv8.2-A, NEON, dotprod, fp16"),
    "neoverse-n1": Board("neoverse-n1", 4, "ARMv8.2-A, NEON, dotprod, fp16"),
    "neoverse-v1": Board("neoverse-v1", 4, "ARMv8.4-A, NEON, SVE, dotprod, i8mm, bf16, fp16fml"),
    "neoverse-n2": Board("neoverse-n2", 4, "ARMv9-A, NEON, SVE2, dotprod, i8mm, bf16, fp16fml"),
    "rpi3": Board("cortex-a53", 4, "Raspberry Pi 3 (Cortex-A53)"),
    "rpi4": Board("cortex-a72", 4, "Raspberry Pi 4 (Cortex-A72)"),
    "rpi5": Board("cortex-a76", 4, "Raspberry Pi 5 (Cortex-A76)"),
    "rk3588": Board("cortex-a76", 4, "Rockchip RK3588 (4x Cortex-A76 big cores)"),
    "jetson-orin": Board("cortex-a78ae", 6, "NVIDIA Jetson Orin (Cortex-A78AE; 6-12 cores)"),
    "graviton2": Board("neoverse-n1", 4, "AWS Graviton2 (Neoverse-N1; set num_cores)"),
    "graviton3": Board("neoverse-v1", 4, "AWS Graviton3 (Neoverse-V1; set num_cores)"),
}


@register_target
class Arm(Target):
    """aarch64 CPU (LLVM, NEON), cross-compiled to a bundle; board=rpi4|rpi5|rk3588|graviton2.."""

    name = "arm"
    # int8 convs are NCHW kernels here (static shapes); a symbolic batch or image size takes
    # the NHWC ones, which build for aarch64 too (checked under qemu: tests/arm).
    int8_nhwc_convs = True

    @dataclass(frozen=True)
    class Options:
        board: str = "generic"  # a key of BOARDS (core or board name)
        mcpu: str = ""  # LLVM CPU, overrides the board's
        mattr: tuple[str, ...] = ()  # extra features, e.g. +dotprod
        num_cores: int = 0  # 0: the board's
        triple: str = "aarch64-linux-gnu"
        cc: str = DEFAULT_CC  # cross compiler (name on PATH or path)
        schedules: bool = True  # schedule-cpu, as for x86
        # Block-sparse kernels (4x1 NEON blocks; int8: 4x4 sdot blocks) for matmuls / Gemm whose
        # constant weights are mostly zero blocks (`sparsify`, `materialize-int8`,
        # docs/SPARSITY.md); false: every layer dense.
        sparse: bool = True
        bundle: bool = True  # add runner + runtime libraries (false: model.so + manifest only)
        wheel_platform: str = "manylinux_2_28_aarch64"  # where the board runtime comes from
        # This machine is the board (an aarch64 host): build in memory and run here, as host
        # evaluation (constant folding, calibration) does; see `for_host`.
        native: bool = False

    @classmethod
    def presets(cls) -> dict[str, str]:
        return {
            f"board={name}": f"{b.about}; LLVM -mcpu={b.mcpu or '(generic, +neon)'}"
            for name, b in BOARDS.items()
        }

    @classmethod
    def from_text_options(cls, raw: Mapping[str, str]) -> Target:
        target = super().from_text_options(raw)
        if target.options.board not in BOARDS:
            raise TargetError(
                f"target 'arm': unknown board '{target.options.board}' "
                f"(boards: {', '.join(BOARDS)})"
            )
        target.cross_compiler()  # fail before compiling, not at export
        return target

    @classmethod
    def for_host(cls) -> Target:
        """An aarch64 host compiling for itself: its own CPU and cores, the native compiler."""
        import os

        return cls(
            cls.Options(
                mcpu=_tvm.host_cpu_name(),
                num_cores=os.cpu_count() or 1,
                cc="g++",
                bundle=False,
                native=True,
            )
        )

    @property
    def board(self) -> Board:
        return BOARDS[self.options.board]

    def tvm_target(self) -> tvm.target.Target:
        mcpu = self.options.mcpu or self.board.mcpu
        spec: dict[str, Any] = {"kind": "llvm", "mtriple": self.options.triple}
        if mcpu:
            spec["mcpu"] = mcpu
        spec["mattr"] = ["+neon", *self.options.mattr]
        spec["num-cores"] = self.options.num_cores or self.board.cores
        return _tvm.make_target(spec)

    def stages(self, tuning_db: Path | None = None) -> dict[str, list[str]]:
        return {
            "legalize": self._legalize(),
            "schedule": cpu_schedule_stage(tuning_db, self.options.schedules, self.options.sparse),
            "lower": list(CPU_LOWER),
        }

    def _legalize(self) -> list[str]:
        """The CPU legalize stage, with `sparsify` after `fold-pad` as on x86 (convs stay NCHW
        here, so only matmuls and Gemm can take the block-sparse op)."""
        stage = list(CPU_LEGALIZE)
        if self.options.sparse:
            stage.insert(stage.index("fold-pad") + 1, sparsify_item(self.tvm_target()))
        return stage

    def tir_pipeline(self) -> str:
        return cpu_lowering.tir_pipeline()

    def cross_compiler(self) -> str:
        """Path of the cross compiler; TargetError naming the package when there is none."""
        path = shutil.which(self.options.cc)
        if path is None:
            hint = (
                f"install it with `apt-get install {CC_PACKAGE}`"
                if self.options.cc == DEFAULT_CC
                else "check --target-opt cc=..."
            )
            raise TargetError(f"target 'arm' needs the cross compiler {self.options.cc}: {hint}")
        return path

    def export(self, executable: Any, path: Path) -> None:
        from tvm.support import cc

        _tvm.export_library(executable, path, fcompile=cc.cross_compiler(self.cross_compiler()))

    def export_bundle(self, directory: Path, manifest: dict[str, Any]) -> None:
        """The runner, the aarch64 TVM runtime and io.txt, described in manifest["bundle"]."""
        if not self.options.bundle:
            return
        manifest["bundle"] = write_bundle(
            directory, manifest, self.cross_compiler(), self.options.wheel_platform
        )

    def availability(self) -> Availability:
        if self.options.native:
            return Availability(True, True, "this aarch64 machine")
        if shutil.which(self.options.cc) is None:
            reason = f"needs {self.options.cc}: apt-get install {CC_PACKAGE}"
            return Availability(False, False, reason)
        if shutil.which(QEMU) and QEMU_SYSROOT.is_dir():
            return Availability(True, False, "runs on the board; qemu-aarch64 here for checks")
        return Availability(True, False, "runs on the board")

    def device(self) -> Any:
        if self.options.native:
            return tvm.cpu()
        raise TargetError(
            "target 'arm' cannot run on this machine (e.g. --verify-each): "
            "run the bundle on the board or under qemu (docs/ARM.md)"
        )
