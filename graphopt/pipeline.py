"""Text pipelines: "fold-constants,fuse{level=2},tvm.FoldConstant" and the O0..O3 presets.

Grammar: `item (',' item)*`, item = `NAME` or `NAME{key=value,...}`. A preset name (O0..O3)
expands to its passes. `format_pipeline(parse_pipeline(t))` is the canonical text of t, and
parsing the canonical text gives the same pipeline again (round-trip).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import tvm

from .errors import PassFailure, PipelineError
from .pass_infra import GraphPass, PassResult, make_pass

# Each preset is the previous one plus more. Graph-level passes only: the target adds its own
# stages (legalize, schedule, lower) after these.
PRESETS: dict[str, str] = {
    "O0": "",
    "O1": "fold-constants,simplify,dce",
    "O2": "fold-constants,simplify,fold-batchnorm,fold-constants,cse,dce",
    # fold-pad before fuse: once a conv is inside a fused group, the target's fold-pad can no
    # longer fold the importer's pad kernel in front of it. fuse with attention: schedule-cpu's
    # attention rule schedules the fused kernel (bench/results/passes.md).
    "O3": "fold-constants,simplify,fold-batchnorm,fold-constants,cse,fold-pad,"
    "fuse,fold-constants,dce",
}
DEFAULT_PRESET = "O2"

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class PassSpec:
    """One pipeline item as text: a pass name and its `{key=value}` options, in order."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        if not self.options:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in self.options) + "}"


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
            if depth > 1:
                raise PipelineError(f"nested '{{' at column {i + 1} in pipeline '{text}'")
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unmatched '}}' at column {i + 1} in pipeline '{text}'")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise PipelineError(f"unclosed '{{' in pipeline '{text}'")
    items.append(text[start:])
    return items


def _parse_item(item: str, whole: str) -> PassSpec:
    item = item.strip()
    if not item:
        raise PipelineError(f"empty pass name in pipeline '{whole}' (stray comma?)")
    name, _, rest = item.partition("{")
    name = name.strip()
    if not _NAME.match(name):
        raise PipelineError(f"bad pass name '{name}' in pipeline '{whole}'")
    options: list[tuple[str, str]] = []
    if rest:
        if not rest.endswith("}"):
            raise PipelineError(f"text after '}}' in '{item}' of pipeline '{whole}'")
        body = rest[:-1].strip()
        for pair in body.split(",") if body else []:
            key, eq, value = pair.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key or not value:
                raise PipelineError(f"option '{pair.strip()}' of '{name}' is not key=value")
            if any(k == key for k, _ in options):
                raise PipelineError(f"option '{key}' given twice for '{name}'")
            options.append((key, value))
    return PassSpec(name, tuple(options))


def parse_pipeline(text: str) -> list[PassSpec]:
    """Parse pipeline text into specs, expanding presets; raises PipelineError on bad syntax."""
    text = text.strip()
    if not text:
        return []
    specs: list[PassSpec] = []
    for item in _split_top_level(text):
        spec = _parse_item(item, text)
        if spec.name in PRESETS:
            if spec.options:
                raise PipelineError(f"preset '{spec.name}' takes no options")
            specs.extend(parse_pipeline(PRESETS[spec.name]))
        else:
            specs.append(spec)
    return specs


def format_pipeline(specs: Sequence[PassSpec]) -> str:
    return ",".join(s.text() for s in specs)


def instantiate(specs: Sequence[PassSpec]) -> list[GraphPass]:
    """Resolve every name; all unknown names are reported together."""
    passes, errors = [], []
    for spec in specs:
        try:
            passes.append(make_pass(spec.name, dict(spec.options)))
        except PipelineError as err:
            errors.append(str(err))
    if errors:
        raise PipelineError("; ".join(errors))
    return passes


def canonical_text(passes: Sequence[GraphPass]) -> str:
    """The exact text that rebuilds these pass instances (recorded in every manifest)."""
    return format_pipeline([PassSpec(p.name, tuple(p.option_text().items())) for p in passes])


def run_passes(
    mod: tvm.IRModule,
    passes: Sequence[GraphPass],
    instruments: Sequence[object] = (),
    *,
    stage: str = "graph",
    already_ran: Sequence[str] = (),
) -> tvm.IRModule:
    """Run passes in order, calling each instrument's hooks; returns the final module."""
    ran = list(already_ran)
    for p in passes:
        missing = [r for r in p.requires if r not in ran]
        if missing:
            raise PipelineError(
                f"pass '{p.name}' requires {', '.join(missing)} to run before it; "
                f"ran so far: {', '.join(ran) or 'nothing'}"
            )
        start = time.perf_counter()
        try:
            result: PassResult = p(mod)
        except Exception as err:  # noqa: BLE001 - re-raised with the pipeline context
            if isinstance(err, PipelineError):
                raise
            raise PassFailure(
                f"pass '{p.name}' ({stage} stage) failed: {err}\n"
                f"passes that ran before it: {', '.join(ran) or 'none'}"
            ) from err
        seconds = time.perf_counter() - start
        for inst in instruments:
            hook = getattr(inst, "after_pass", None)
            if hook is not None:
                hook(
                    index=len(ran), pass_=p, stage=stage, before=mod, result=result, seconds=seconds
                )
        mod = result.module
        ran.append(p.name)
    return mod
