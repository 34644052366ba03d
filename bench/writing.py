"""How every benchmark stores its result: `<stem>.json` (the numbers, with the machine) and
`<stem>.md` (the table a person reads) side by side in the results folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, stem: str, data: Any, text: str, indent: int = 2) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=indent) + "\n")
    (out / f"{stem}.md").write_text(text)
