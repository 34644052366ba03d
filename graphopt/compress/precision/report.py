"""The precision method's manifest rows and its compile / report table: per-layer precision,
why a layer stayed fp32, weight bytes, and the accuracy against fp32."""

from __future__ import annotations

import numpy as np

from ..common.layers import Layer
from .layers import per_channel


def layer_rows(
    every: list[Layer],
    precisions: dict[str, str],
    why: dict[str, str],
    candidates: list[Layer],
    tables: list[list[int]],
    dtype: str,
    convs: bool = False,
) -> dict:
    """Per layer (and 16-bit embedding table): op, precision, reason kept fp32, fp32 and
    stored weight bytes; the totals. `convs`: the target has 16-bit depthwise and window
    convs."""
    names = {ly.name for ly in candidates}
    rows, fp32_total, stored = [], 0, 0
    for ly in every:
        fp32 = int(np.prod(ly.weight_shape)) * 4
        p = precisions[ly.name]
        size = fp32 // 2 if p != "fp32" else fp32
        reason = why.get(ly.name)
        if ly.name not in names and (ly.kind != "conv2d" or convs and _one_group(ly)):
            reason = "dynamic shape"
        elif ly.name not in names:
            reason = "no 16-bit kernel (grouped conv)" if convs else "no 16-bit kernel (not 1x1)"
        rows.append({"layer": ly.name, "what": ly.describe(), "precision": p,
                     "fp32_bytes": fp32, "bytes": size, "reason": reason})  # fmt: skip
        fp32_total += fp32
        stored += size
    for shape in tables:
        fp32 = shape[0] * shape[1] * 4
        rows.append({"layer": "embedding", "what": f"take {shape}", "precision": dtype,
                     "fp32_bytes": fp32, "bytes": fp32 // 2, "reason": None})  # fmt: skip
        fp32_total += fp32
        stored += fp32 // 2
    ratio = round(stored / fp32_total, 4) if fp32_total else None
    return {
        "layers": rows,
        "low_layers": sum(r["precision"] != "fp32" for r in rows),
        "size": {"fp32": fp32_total, "stored": stored, "ratio": ratio},
    }


def _one_group(layer: Layer) -> bool:
    """A conv some 16-bit kernel takes when its shape is static (depthwise, or one group)."""
    return per_channel(layer) or int(layer.call.attrs.groups) == 1


def format_report(m: dict) -> str:
    """The compile output: per-layer precision and bytes, the gate's note, the accuracy."""
    from ...tables import format_table

    rows = [
        [r["layer"], r["what"], r["precision"], r["fp32_bytes"], r["bytes"], r["reason"] or ""]
        for r in m["layers"]
    ]
    head = f"precision {m['scheme']}: {m['low_layers']}/{len(m['layers'])} layers {m['scheme']}"
    cols = ["layer", "op", "precision", "fp32 bytes", "bytes", "why fp32"]
    s = m["size"]
    tail = f"layer weights {s['fp32']} B fp32 -> {s['stored']} B (ratio {s['ratio']})"
    lines = [head, format_table(cols, rows), tail, f"note: {m['note']}"]
    a = m.get("accuracy")
    if a and a.get("measured"):  # the first and last layer measured, not the whole model
        lines.append(
            f"first and last layer measured in the {m['scheme']} model ({a['metric']}, "
            f"{a['samples']} feeds, against it with them fp32: {a['fp32']:.4f}): with them "
            f"{m['scheme']} {a['all_16bit']:.4f}, chosen {a['final']:.4f}"
            + (f"; artifact against fp32 {a['artifact']:.4f}" if "artifact" in a else "")
        )
    elif a:
        artifact = f", artifact {a['artifact']:.4f}" if "artifact" in a else ""
        lines.append(
            f"accuracy ({a['metric']}, {a['samples']} feeds): fp32 {a['fp32']:.4f}, every layer "
            f"{m['scheme']} {a['all_16bit']:.4f}, chosen {a['final']:.4f}{artifact}"
        )
    return "\n".join(lines)
