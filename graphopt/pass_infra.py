"""Pass base class, results and the registry that text pipelines resolve names against.

A graphopt pass is one class in one file of `passes/`, registered under a kebab-case name equal
to its file stem. TVM's own Relax passes are usable beside ours as `tvm.<ClassName>` (for
example `tvm.FoldConstant` or `tvm.FuseOps{fuse_opt_level=2}`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import tvm

from . import _tvm
from .errors import PipelineError

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
TVM_PREFIX = "tvm."


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new module, whether it changed anything, and what it did."""

    module: tvm.IRModule
    modified: bool
    stats: Mapping[str, int] = field(default_factory=dict)


class GraphPass:
    """Base class of every pass. Subclasses set `name`, optionally `Options`, and `run`.

    `requires` lists passes that must have run earlier in the same pipeline; the pipeline
    checks it and names the passes that did run when it is not met.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    # True for passes that move convs / matmuls into fused functions, where compression's layer
    # discovery cannot see them: compile runs compression methods before the first such pass.
    hides_layers: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def summary(cls) -> str:
        """First line of the class's own docstring (not inherited from GraphPass)."""
        doc = (cls.__dict__.get("__doc__") or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def from_text_options(cls, raw: Mapping[str, str]) -> GraphPass:
        """Build the pass from `{key=value}` strings, converting each to the declared type."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            known = ", ".join(fields) or "none"
            raise PipelineError(
                f"pass '{cls.name}' has no option {', '.join(unknown)} (options: {known})"
            )
        values = {k: _convert(cls.name, k, v, fields[k].type) for k, v in raw.items()}
        return cls(cls.Options(**values))

    def option_text(self) -> dict[str, str]:
        """Options that differ from the defaults, as pipeline text values (for round-trips)."""
        default = self.Options()
        out = {}
        for f in dataclasses.fields(self.options):
            value = getattr(self.options, f.name)
            if value != getattr(default, f.name):
                out[f.name] = format_value(value)
        return out

    def run(self, mod: tvm.IRModule) -> PassResult:
        raise NotImplementedError

    def __call__(self, mod: tvm.IRModule) -> PassResult:
        return self.run(mod)


class TvmPass(GraphPass):
    """A TVM Relax pass used by name; `modified` comes from structural comparison."""

    def __init__(self, tvm_name: str, kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.tvm_name = tvm_name
        self.kwargs = dict(kwargs or {})
        self.name = TVM_PREFIX + tvm_name  # type: ignore[misc]

    def option_text(self) -> dict[str, str]:
        return {k: format_value(v) for k, v in self.kwargs.items()}

    def run(self, mod: tvm.IRModule) -> PassResult:
        ctor = _tvm.relax_pass_class(self.tvm_name)
        assert ctor is not None
        new = ctor(**self.kwargs)(mod)
        return PassResult(new, not _tvm.structural_equal(new, mod))


_REGISTRY: dict[str, type[GraphPass]] = {}


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    """Class decorator: add a pass to the registry under its kebab-case `name`."""
    if not _KEBAB.match(cls.name):
        raise ValueError(f"pass name {cls.name!r} must be kebab-case")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} registered twice")
    if not dataclasses.is_dataclass(cls.Options) or not cls.Options.__dataclass_params__.frozen:
        raise ValueError(f"pass {cls.name!r}: Options must be a frozen dataclass")
    if not cls.summary():
        raise ValueError(f"pass {cls.name!r} needs a docstring (its first line is the summary)")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[GraphPass]]:
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def make_pass(name: str, raw_options: Mapping[str, str] | None = None) -> GraphPass:
    """Instantiate a registered pass or a `tvm.<Name>` pass from its name and text options."""
    raw = dict(raw_options or {})
    if name.startswith(TVM_PREFIX):
        tvm_name = name[len(TVM_PREFIX) :]
        ctor = _tvm.relax_pass_class(tvm_name)
        if ctor is None:
            raise PipelineError(f"unknown TVM pass '{name}' (no relax.transform.{tvm_name})")
        _check_tvm_kwargs(name, ctor, raw)
        return TvmPass(tvm_name, {k: parse_value(v) for k, v in raw.items()})
    passes = registered_passes()
    if name not in passes:
        close = [n for n in passes if n.split("-")[0] == name.split("-")[0]]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PipelineError(f"unknown pass '{name}'{hint}; `graphopt passes` lists them")
    return passes[name].from_text_options(raw)


def _check_tvm_kwargs(name: str, ctor: Any, raw: Mapping[str, str]) -> None:
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        return
    unknown = sorted(set(raw) - set(params))
    if unknown:
        raise PipelineError(
            f"TVM pass '{name}' has no option {', '.join(unknown)} "
            f"(options: {', '.join(params) or 'none'})"
        )


PLUGIN_PACKAGES = ("graphopt.passes", "graphopt.targets")


def _load_builtin_passes() -> None:
    """Register the graph passes and the target-owned passes. Loaded by name: the registry is
    core, and core never imports the layers above it (tests/test_layers.py)."""
    for package in PLUGIN_PACKAGES:
        importlib.import_module(package)


def parse_value(text: str) -> Any:
    """Pipeline option text to a Python value: bool, int, float, else the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ":".join(format_value(v) for v in value)
    return str(value)


def _convert(pass_name: str, key: str, text: str, declared: Any) -> Any:
    kind = declared if isinstance(declared, str) else getattr(declared, "__name__", str(declared))
    value = parse_value(text)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": True,
    }.get(kind, True)
    if not ok:
        raise PipelineError(f"pass '{pass_name}': option {key}={text} is not a valid {kind}")
    if kind == "float":
        return float(value)
    if kind == "str":
        return text
    if kind.startswith("tuple"):
        return tuple(parse_value(p) for p in text.split(":") if p)
    return value
