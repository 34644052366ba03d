"""What a compilation target is: options, TVM target, named stages, export, availability.

One target = one file in `targets/`, holding a frozen options dataclass (its hash is part of
every cache key) and the pass names of its stages, so the whole flow reads on one screen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import tvm

from .errors import TargetError
from .pass_infra import parse_value

# Stage order after the graph passes. Every target names the passes of each stage.
STAGES = ("legalize", "schedule", "lower")


@dataclass(frozen=True)
class Availability:
    can_compile: bool
    can_run: bool
    reason: str = ""


class Target:
    """Base class of a target; subclasses are registered with `register_target`."""

    name: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.default_options()

    @classmethod
    def default_options(cls) -> Any:
        return cls.Options()

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def presets(cls) -> dict[str, str]:
        """Named option values worth listing in `graphopt targets` (e.g. ARM boards)."""
        return {}

    @classmethod
    def from_text_options(cls, raw: Mapping[str, str]) -> Target:
        """Options from `--target-opt key=value` strings, typed by the dataclass fields."""
        base = cls.default_options()
        fields = {f.name: f for f in dataclasses.fields(base)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise TargetError(
                f"target '{cls.name}' has no option {', '.join(unknown)} "
                f"(options: {', '.join(fields)})"
            )
        values: dict[str, Any] = {}
        for key, text in raw.items():
            current = getattr(base, key)
            if isinstance(current, tuple):
                values[key] = tuple(p for p in text.replace(",", ":").split(":") if p)
            elif isinstance(current, str):
                values[key] = text
            else:
                values[key] = parse_value(text)
        return cls(dataclasses.replace(base, **values))

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def cache_key(self) -> str:
        """Stable across runs: the target name and its frozen options."""
        return f"{self.name}:{sorted(self.options_dict().items())}"

    def tvm_target(self) -> tvm.target.Target:
        raise NotImplementedError

    def stages(self, tuning_db: Path | None = None) -> dict[str, list[str]]:
        """Pass names per stage (see STAGES), as text-pipeline items."""
        raise NotImplementedError

    def tir_pipeline(self) -> str:
        """Name of the TIR pipeline `tvm.compile` lowers the kernels with."""
        return "default"

    def device(self) -> Any:
        return tvm.cpu()

    def build_context(self) -> contextlib.AbstractContextManager:
        """Entered around `tvm.compile` (CUDA: nvcc compiles kernels into fatbins meanwhile)."""
        return contextlib.nullcontext()

    # Whether lower-int8's NHWC conv kernels build for this target (int8 with a symbolic batch
    # or image size takes them where the target's own choice is NCHW).
    int8_nhwc_convs: bool = False

    def pass_options(self, pass_name: str) -> dict[str, str]:
        """Options this target wants for a target-independent pass that compression methods
        add (e.g. x86: `lower-int8{layout=NHWC}`), as pipeline text values: the pass stays
        target-independent and the choice shows in the pipeline text."""
        return {}

    def device_kind(self) -> str:
        """The device the artifact runs on, as the manifest records it (`tvm.device` name):
        `graphopt run`, `load` and the C++ runner open this device, not a hard-coded CPU."""
        return "cpu"

    def export(self, executable: Any, path: Path) -> None:
        from ._tvm import export_library

        export_library(executable, path)

    def export_bundle(self, directory: Path, manifest: dict[str, Any]) -> None:
        """Add what a deployment needs besides the library (may extend `manifest`, which is
        written after this); called inside the atomic artifact directory."""

    def availability(self) -> Availability:
        return Availability(True, True)

    @classmethod
    def for_host(cls) -> Target:
        """This target configured to build and run on this machine (see `host_target`)."""
        return cls()


_TARGETS: dict[str, type[Target]] = {}


# TVM's Relax VM lowering (its dataflow_lower and finalize passes), shared by every target; a
# target may insert passes between the two halves (CUDA: `cuda-graphs`).
VM_LOWER_HEAD = [
    "tvm.RewriteDataflowReshape",
    "tvm.ToNonDataflow",
    "tvm.RemovePurityChecking",
    "tvm.CallTIRRewrite",
    "tvm.StaticPlanBlockMemory",
]
VM_LOWER_TAIL = [
    "tvm.LowerAllocTensor",
    "tvm.KillAfterLastUse",
    "tvm.LowerRuntimeBuiltin",
    "tvm.ComputePrimValue",
    "tvm.VMShapeLower",
    "tvm.AttachGlobalSymbol",
]


def register_target(cls: type[Target]) -> type[Target]:
    if cls.name in _TARGETS and _TARGETS[cls.name] is not cls:
        raise ValueError(f"target {cls.name!r} registered twice")
    _TARGETS[cls.name] = cls
    return cls


def registered_targets() -> dict[str, type[Target]]:
    # By name: core never imports the layers above it (tests/test_layers.py).
    importlib.import_module("graphopt.targets")
    return dict(sorted(_TARGETS.items()))


# Which registered target compiles for this machine itself, by `platform.machine()`.
HOST_TARGETS = {"x86_64": "x86", "AMD64": "x86", "aarch64": "arm", "arm64": "arm"}


def host_target() -> Target:
    """The target that builds and runs on this machine: where host evaluation (constant
    folding, calibration, sensitivity, --verify-each) happens, on x86 and aarch64 hosts."""
    machine = platform.machine()
    if machine not in HOST_TARGETS:
        raise TargetError(f"no graphopt target runs on this host's architecture ({machine})")
    name = HOST_TARGETS[machine]
    return registered_targets()[name].for_host()


def make_target(name: str, raw_options: Mapping[str, str] | None = None) -> Target:
    targets = registered_targets()
    if name not in targets:
        raise TargetError(f"unknown target '{name}' (known: {', '.join(targets)})")
    return targets[name].from_text_options(dict(raw_options or {}))
