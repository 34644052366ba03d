"""The weights file between `--quantize int4` and the `lower-int4` pass: an .npz keyed
`<layer>.packed|scales|zeros|kg|act` (kg = [K, group], act: AWQ's input scale), so GPTQ's and
AWQ's choices reach the pass as data."""

from __future__ import annotations

import numpy as np

from .quant import Int4Weight


def save_weights(path, weights: dict[str, Int4Weight]) -> None:
    arrays = {}
    for name, q in weights.items():
        arrays[f"{name}.packed"] = q.packed
        arrays[f"{name}.scales"] = q.scales
        arrays[f"{name}.kg"] = np.array([q.k, q.group], np.int64)
        if q.zeros is not None:
            arrays[f"{name}.zeros"] = q.zeros
        if q.act_scale is not None:
            arrays[f"{name}.act"] = q.act_scale
    np.savez(path, **arrays)


def load_weights(path) -> dict[str, Int4Weight]:
    """{layer: Int4Weight} from a file of `save_weights`; {} for no path."""
    if not path:
        return {}
    out = {}
    with np.load(path) as data:
        for key in data.files:
            if not key.endswith(".packed"):
                continue
            name = key[: -len(".packed")]
            zeros = data[f"{name}.zeros"] if f"{name}.zeros" in data.files else None
            k, group = (int(v) for v in data[f"{name}.kg"])
            act = data[f"{name}.act"] if f"{name}.act" in data.files else None
            out[name] = Int4Weight(data[key], data[f"{name}.scales"], zeros, k, group, act)
    return out
