"""The activation ranges file: calibration writes it, the `quantize` pass reads it.

{"format": "graphopt-ranges/1", "method": "entropy",
 "layers": {"conv2d_0": {"kind": "conv2d", "weight_shape": [16, 1, 3, 3], "input": [lo, hi]}}}
"""

from __future__ import annotations

import json
from pathlib import Path

from ..common.errors import CalibrationError

FORMAT = "graphopt-ranges/1"


def write_ranges(path: str | Path, layers: dict[str, dict], method: str) -> None:
    doc = {"format": FORMAT, "method": method, "layers": layers}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def read_ranges(path: Path) -> dict[str, dict]:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise CalibrationError(f"ranges file not found: {path}") from err
    except (OSError, ValueError) as err:
        raise CalibrationError(f"ranges file {path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CalibrationError(f"{path} is not a graphopt ranges file ({FORMAT})")
    layers = doc.get("layers", {})
    for name, entry in layers.items():
        ok = isinstance(entry, dict) and "input" in entry and "weight_shape" in entry
        if not ok or len(entry["input"]) != 2:
            raise CalibrationError(f"{path}: layer {name} has no valid input range")
    return layers


def ranges_option(path: str) -> dict[str, dict]:
    """The ranges file a pass was given as an option; its problems are pipeline option errors
    (one line, no traceback)."""
    from ...errors import PipelineError

    try:
        return read_ranges(Path(path))
    except CalibrationError as err:
        raise PipelineError(str(err)) from err
