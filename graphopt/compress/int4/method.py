"""`--quantize int4`: group-wise int4 matmul weights (and embedding tables), round-to-nearest
or GPTQ from calibration activations, lowered by the `lower-int4` pass."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tvm

from ...pass_infra import make_pass, registered_passes
from .. import CompressionContext, CompressionPlan
from ..common.data import load_calibration
from ..common.errors import CalibrationError
from ..common.layers import Layer, find_layers
from .embedding import find_tables
from .gptq import output_error, quantize_gptq
from .quant import GROUP_SIZES, SCALE_DTYPES, Int4Weight, quantize_rtn
from .store import save_weights

MANIFEST_KEY = "int4"
METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class Int4Options:
    """What `--quantize int4 ...` asks for."""

    method: str = "gptq"  # gptq (needs --calibration) | rtn
    group: int = 32
    symmetric: bool = True
    calibration: str | None = None
    samples: int = 64  # calibration feeds for the Hessians
    skip_padding: bool = True  # Hessians without attention_mask's padding rows (hessian.py)
    # GPTQ: added to H's diagonal, times its mean. 0.1, not GPTQ's usual 0.01: a few dozen
    # calibration sentences give fewer rows than K (H is singular); on MiniLM 0.1 took the
    # min cosine from 0.978 to 0.984 (group 32, asymmetric)
    damp: float = 0.1
    clip: bool = True  # per-group range shrink search (quant.clip_search)
    act_order: bool = True  # GPTQ: rows by decreasing H_kk, static group parameters
    scale_dtype: str = "float32"  # float32 | float16 (2 bytes a group instead of 4)
    embedding_group: int | None = None  # embedding tables' group (None: `group`)
    embeddings: bool = True  # int4 embedding tables too
    skip: tuple[str, ...] = ()  # layers kept fp32


def check_options(o: Int4Options) -> None:
    if o.method not in METHODS:
        raise CalibrationError(f"--int4-method must be one of {', '.join(METHODS)}")
    if o.scale_dtype not in SCALE_DTYPES:
        raise CalibrationError(f"--int4-scale-dtype must be one of {', '.join(SCALE_DTYPES)}")
    if o.group not in GROUP_SIZES or (o.embedding_group or o.group) not in GROUP_SIZES:
        raise CalibrationError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}")
    if o.method == "gptq" and not o.calibration:
        raise CalibrationError("--int4-method gptq needs --calibration DATA (or use rtn)")


@dataclass
class Int4:
    """int4 weight-only quantization of matmul/Gemm/linear layers (docs/INT4.md)."""

    options: Int4Options
    name: str = "int4"
    requires: tuple[str, ...] = ("fold-constants",)

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        o = self.options
        check_options(o)
        layers = [ly for ly in find_layers(mod["main"]) if ly.kind == "matmul"]
        layers = [ly for ly in layers if ly.name not in o.skip]
        if not layers and not o.embeddings:
            return None
        clock = time.perf_counter()
        errors: dict[str, dict] = {}
        if o.method == "gptq" and layers:
            weights = _gptq(mod, layers, o, ctx, errors)
        else:
            weights = {
                ly.name: quantize_rtn(
                    ly.weight, o.group, o.symmetric, o.clip, scale_dtype=o.scale_dtype
                )
                for ly in layers
            }
        seconds = round(time.perf_counter() - clock, 2)
        workdir = tempfile.TemporaryDirectory(prefix="graphopt-int4-")
        path = Path(workdir.name) / "int4_weights.npz"
        save_weights(path, weights)
        pass_opts = {
            "group": str(o.group),
            "symmetric": "true" if o.symmetric else "false",
            "weights": str(path),
            "embeddings": "true" if o.embeddings else "false",
            "clip": "true" if o.clip else "false",
            "scale_dtype": o.scale_dtype,
            "embedding_group": str(o.embedding_group or o.group),
        }
        if o.skip:
            pass_opts["skip"] = ":".join(o.skip)
        passes = [make_pass("lower-int4", pass_opts)]
        if "lower-int4" not in registered_passes():
            raise CalibrationError("--quantize int4 needs the lower-int4 pass (graphopt.passes)")
        manifest = _manifest(o, mod["main"], weights, errors, seconds)
        return CompressionPlan(
            MANIFEST_KEY, passes, manifest, format_report(manifest), cleanup=workdir.cleanup
        )


def _gptq(mod, layers: list[Layer], o: Int4Options, ctx: CompressionContext, errors) -> dict:
    from ..int8.flow import evaluation_target
    from .hessian import hessians

    feeds = load_calibration(o.calibration, ctx.inputs, limit=o.samples)
    ctx.progress(f"int4 gptq: {len(layers)} layers, {len(feeds)} calibration feeds")
    target = evaluation_target(ctx.target)
    names = [ly.name for ly in layers]
    hs, rows = hessians(mod, feeds, names, target, ctx.progress, o.skip_padding)
    weights: dict[str, Int4Weight] = {}
    for ly in layers:
        w = ly.weight
        q = quantize_gptq(
            w,
            hs[ly.name],
            o.group,
            o.symmetric,
            o.damp,
            clip=o.clip,
            act_order=o.act_order,
            scale_dtype=o.scale_dtype,
        )
        rtn = quantize_rtn(w, o.group, o.symmetric)  # plain rounding: the baseline
        mean_h = hs[ly.name] / max(rows[ly.name], 1)  # per-row output error, per channel
        errors[ly.name] = {
            "rtn_mse": round(output_error(w, rtn, mean_h) / w.shape[1], 8),
            "gptq_mse": round(output_error(w, q, mean_h) / w.shape[1], 8),
        }
        weights[ly.name] = q
    return weights


def _weight_bytes(q: Int4Weight) -> dict:
    zeros = 0 if q.zeros is None else q.zeros.nbytes
    return {"packed": q.packed.nbytes, "scales": q.scales.nbytes, "zeros": zeros}


def _manifest(o: Int4Options, func, weights: dict, errors: dict, seconds) -> dict:
    """Per-layer bits and bytes, the embedding tables, and the size breakdown."""
    layers = [ly for ly in find_layers(func) if ly.kind == "matmul"]
    rows, total = [], {"fp32": 0, "packed": 0, "scales": 0, "zeros": 0, "kept_fp32": 0}
    for ly in layers:
        fp32 = int(np.prod(ly.weight_shape)) * 4
        total["fp32"] += fp32
        q = weights.get(ly.name)
        row = {"layer": ly.name, "what": ly.describe(), "bits": 4 if q else 32, "fp32_bytes": fp32}
        if q is None:
            total["kept_fp32"] += fp32
            rows.append({**row, "reason": "skip"})
            continue
        parts = _weight_bytes(q)
        for key, v in parts.items():
            total[key] += v
        rows.append({**row, "group": q.group, "bytes": parts, **errors.get(ly.name, {})})
    tables = []
    eg = o.embedding_group or o.group
    for t in find_tables(func, eg) if o.embeddings else []:
        v, d = t.shape
        parts = {"packed": v * d // 2, "scales": v * d // eg * np.dtype(o.scale_dtype).itemsize}
        parts["zeros"] = 0 if o.symmetric else v * d // eg
        tables.append({"shape": [v, d], "fp32_bytes": t.nbytes, "bytes": parts})
        total["fp32"] += t.nbytes
        for key, n in parts.items():
            total[key] += n
    int4 = total["packed"] + total["scales"] + total["zeros"] + total["kept_fp32"]
    total["ratio"] = round(int4 / total["fp32"], 4) if total["fp32"] else None
    return {
        "scheme": "int4",
        "settings": {**asdict(o), "skip": list(o.skip)},
        "kernels": "int4-weight matmul (lower-int4; materialize-int4 where the target has it)",
        "layers": rows,
        "int4_layers": sum(r["bits"] == 4 for r in rows),
        "embeddings": tables,
        "size": total,
        "seconds": {"quantize": seconds},
    }


def format_report(m: dict) -> str:
    """The compile output: per-layer bits and bytes, the size breakdown."""
    from ...tables import format_table

    rows = []
    for r in m["layers"]:
        b = r.get("bytes")
        size = sum(b.values()) if b else r["fp32_bytes"]
        err = f"{r['rtn_mse']:.3g} -> {r['gptq_mse']:.3g}" if "gptq_mse" in r else "-"
        rows.append([r["layer"], r["what"], r["bits"], r["fp32_bytes"], size, err])
    for t in m["embeddings"]:
        rows.append(
            ["embedding", f"take {t['shape']}", 4, t["fp32_bytes"], sum(t["bytes"].values()), "-"]
        )
    s, o = m["size"], m["settings"]
    head = (
        f"int4 ({o['method']}, group {o['group']}, "
        f"{'symmetric' if o['symmetric'] else 'asymmetric'}): {m['int4_layers']}/"
        f"{len(m['layers'])} matmuls int4, {len(m['embeddings'])} embedding table(s)"
    )
    cols = ["layer", "op", "bits", "fp32 bytes", "bytes", "output MSE rtn -> gptq"]
    tail = (
        f"weights {s['fp32']} B fp32 -> {s['packed']} packed + {s['scales']} scales + "
        f"{s['zeros']} zero points + {s['kept_fp32']} kept fp32 (ratio {s['ratio']})"
    )
    return "\n".join([head, format_table(cols, rows), tail])
