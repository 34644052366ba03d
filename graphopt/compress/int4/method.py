"""`--quantize int4`: group-wise int4 matmul weights (and embedding tables), round-to-nearest
or GPTQ from calibration activations, after W4A8 smoothing (the default with calibration) or
AWQ scaling, lowered by the `lower-int4` pass; with --max-drop, per-layer int4 / int8 / fp32
under the accuracy budget (budget.py)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import tvm
from tvm import relax

from ...pass_infra import GraphPass, make_pass, registered_passes
from ...progress import Meter
from ...target_infra import Target
from ...w8_conv_ops import dequantize_conv_weight, quantize_conv_weight
from .. import CompressionContext, CompressionPlan
from ..common.budget import check_budget_options, eval_feeds
from ..common.data import load_calibration
from ..common.errors import CalibrationError
from ..common.layers import Layer, find_layers
from .awq import scaled_hessian, search_scale, with_input_scale
from .budget import FALLBACKS, Choice, SwitchRunner, choose, switch_module
from .embedding import embedding_table, find_tables
from .gptq import output_error, quantize_gptq
from .layers import int4_layers, out_channels, weight_matrix, window_convs
from .quant import GROUP_SIZES, SCALE_DTYPES, Int4Weight, quantize_rtn
from .smooth import search_smooth
from .store import save_weights

MANIFEST_KEY = "int4"
METHODS = ("auto", "rtn", "gptq", "adaround")
ACTIVATIONS = ("fp32", "int8")  # --int4-activations: what an int4 layer's kernel multiplies
LOWER_INT8 = "lower-int8"
BUDGET_ORDERS = ("bytes", "sensitivity")
WINDOWS = ("int8", "fp32")


@dataclass(frozen=True)
class Int4Options:
    """What `--quantize int4 ...` asks for."""

    # gptq | adaround (both need --calibration) | rtn | auto (`resolve_method`)
    method: str = "auto"
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
    awq: bool = False  # activation-aware input scaling before rounding / GPTQ (awq.py)
    # W4A8 input smoothing searched on the W4A8 output error (smooth.py); None: on for the
    # matmuls (not the 1x1 convs: no gain measured on the CNNs) of W4A8
    # with calibration data and without AWQ
    smooth: bool | None = None
    activations: str = "int8"  # int8: W4A8 (rows quantized at run time) | fp32: W4 x fp32
    # --max-drop: keep the most sensitive layers off int4 (budget.py)
    max_drop: float | None = None
    fallback: str = "int8"  # int8 (dynamic per-row) | fp32: what a layer kept off int4 runs
    eval_data: str | None = None  # --eval .npz (else the calibration feeds)
    metric: str = "auto"
    sensitivity_samples: int = 32  # feeds the budget is scored on (without --eval)
    layer_samples: int = 8  # feeds each layer's sensitivity is measured on
    adaround_iters: int = 1000  # Adam steps a layer (adaround.py)
    # the convs int4 does not take (depthwise, stem): fp32 | int8 weights (w8_conv_ops: a
    # smaller library, but a generic NCHW kernel: MobileNetV2 ran 1.9x slower with them)
    windows: str = "fp32"
    # --max-drop ladder: "bytes" (output noise removed per byte added) | "sensitivity"
    budget_order: str = "bytes"
    # --int4-max-size: the quantized layers' bytes at most this fraction of their fp32 bytes
    max_size: float | None = None


def check_options(o: Int4Options) -> None:
    if o.method not in METHODS:
        raise CalibrationError(f"--int4-method must be one of {', '.join(METHODS)}")
    if o.scale_dtype not in SCALE_DTYPES:
        raise CalibrationError(f"--int4-scale-dtype must be one of {', '.join(SCALE_DTYPES)}")
    if o.group not in GROUP_SIZES or (o.embedding_group or o.group) not in GROUP_SIZES:
        raise CalibrationError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}")
    if o.method not in ("rtn", "auto") and not o.calibration:
        raise CalibrationError(f"--int4-method {o.method} needs --calibration DATA (or use rtn)")
    if o.awq and not o.calibration:
        raise CalibrationError("--int4-awq needs --calibration DATA (activation statistics)")
    if o.smooth and not o.calibration:
        raise CalibrationError("--int4-smooth needs --calibration DATA (activation statistics)")
    if o.smooth and o.awq:
        raise CalibrationError("--int4-smooth and --int4-awq both scale the inputs: pick one")
    if o.smooth and o.activations != "int8":
        raise CalibrationError("--int4-smooth is for W4A8 (--int4-activations int8)")
    if o.activations not in ACTIVATIONS:
        raise CalibrationError(f"--int4-activations must be one of {', '.join(ACTIVATIONS)}")
    if o.budget_order not in BUDGET_ORDERS:
        raise CalibrationError(f"--int4-budget-order must be one of {', '.join(BUDGET_ORDERS)}")
    if o.max_size is not None and not 0 < o.max_size <= 1:
        raise CalibrationError("--int4-max-size must be in (0, 1]: a fraction of fp32's bytes")
    if o.max_size is not None and not (o.calibration or o.eval_data):
        raise CalibrationError("--int4-max-size needs data (--calibration or --eval)")
    if o.windows not in WINDOWS:
        raise CalibrationError(f"--int4-windows must be one of {', '.join(WINDOWS)}")
    if o.fallback not in FALLBACKS:
        raise CalibrationError(f"--int4-fallback must be one of {', '.join(FALLBACKS)}")
    check_budget_options(o)


def window_weights(func: relax.Function, o: Int4Options) -> dict[str, np.ndarray]:
    """{conv: the weight it computes with} of the convs stored int8 (`--int4-windows int8`:
    depthwise, stem and other convs int4 does not take, unless skipped); {} with fp32."""
    if o.windows != "int8":
        return {}
    return {
        ly.name: dequantize_conv_weight(*quantize_conv_weight(ly.weight))
        for ly in window_convs(func, o.skip)
    }


def resolve_method(o: Int4Options, layers: list[Layer]) -> str:
    """auto: round-to-nearest without calibration data; with it AdaRound for a model with
    int4 convs (a CNN: on MobileNetV2 it kept 52 of 64 top-1 agreements where GPTQ kept 50,
    docs/INT4.md), GPTQ otherwise (transformers: measured with GPTQ)."""
    if o.method != "auto":
        return o.method
    if not o.calibration:
        return "rtn"
    return "adaround" if any(ly.kind == "conv2d" for ly in layers) else "gptq"


def smoothing(o: Int4Options, layer: Layer | None = None) -> bool:
    """Whether the W4A8 smoothing runs (for `layer`): as asked, else with calibration data for
    W4A8 matmuls. 1x1 convs only when asked: on MobileNetV2 and EfficientNet-Lite0 it did not
    raise the top-1 agreement (docs/INT4.md)."""
    if o.smooth is not None:
        return o.smooth
    auto = bool(o.calibration) and o.activations == "int8" and not o.awq
    return auto and (layer is None or layer.kind == "matmul")


@dataclass
class Int4:
    """int4 weight-only quantization of matmul/Gemm/linear layers (docs/INT4.md)."""

    options: Int4Options
    name: str = "int4"
    requires: tuple[str, ...] = ("fold-constants",)
    # Calibrates on samples of any size in the dims' ranges; its kernels take a symbolic
    # row count (a sequence range, a symbolic batch or image size)
    symbolic_shapes: ClassVar[bool] = True

    def plan(self, mod: tvm.IRModule, ctx: CompressionContext) -> CompressionPlan | None:
        check_options(self.options)
        layers = [ly for ly in int4_layers(mod["main"]) if ly.name not in self.options.skip]
        o = replace(self.options, method=resolve_method(self.options, layers))
        if not layers and not o.embeddings:
            return None
        clock = time.perf_counter()
        errors: dict[str, dict] = {}
        if (o.method != "rtn" or o.awq or any(smoothing(o, ly) for ly in layers)) and layers:
            weights = _calibrated(mod, layers, o, ctx, errors)
        else:
            weights = {
                ly.name: quantize_rtn(
                    weight_matrix(ly), o.group, o.symmetric, o.clip, scale_dtype=o.scale_dtype
                )
                for ly in layers
            }
        seconds = {"quantize": round(time.perf_counter() - clock, 2)}
        if "lower-int4" not in registered_passes():
            raise CalibrationError("--quantize int4 needs the lower-int4 pass (graphopt.passes)")
        workdir = tempfile.TemporaryDirectory(prefix="graphopt-int4-")
        path = Path(workdir.name) / "int4_weights.npz"
        save_weights(path, weights)
        planner = _Planner(o, mod["main"], weights, errors, seconds, path, workdir, ctx.target)
        if (o.max_drop is not None or o.max_size is not None) and layers:
            clock = time.perf_counter()
            planner.budget(mod, layers, ctx)
            seconds["budget"] = round(time.perf_counter() - clock, 2)
        return planner.plan(planner.choice.level if planner.choice else 0)


@dataclass
class _Planner:
    """The int4 plan at any level of the budget's ladder (`budget.py`), so the artifact
    check can ask for one more layer off int4."""

    o: Int4Options
    func: relax.Function
    weights: dict[str, Int4Weight]
    errors: dict[str, dict]
    seconds: dict
    path: Path
    workdir: tempfile.TemporaryDirectory
    target: Target
    choice: Choice | None = None
    check: Callable | None = None

    def budget(self, mod: tvm.IRModule, layers: list[Layer], ctx: CompressionContext) -> None:
        """Sensitivity and the --max-drop search on the switchable graph."""
        from ..int8.flow import evaluation_target

        o = self.o
        calib = load_calibration(o.calibration, ctx.inputs) if o.calibration else []
        feeds, labels = eval_feeds(o.eval_data, ctx.inputs, calib, o.sensitivity_samples)
        if not feeds:
            raise CalibrationError("--max-drop: no evaluation feeds in the data given")
        ctx.progress(f"int4 max-drop: building the switchable graph ({len(layers)} layers)")
        tables = self._table if o.embeddings else None
        a8, windows = o.activations == "int8", window_weights(mod["main"], o)
        switched = switch_module(mod, layers, self.weights, o.fallback, tables, a8, windows)
        runner = SwitchRunner(switched, layers, o.fallback, evaluation_target(ctx.target))
        self.choice = choose(
            runner,
            feeds,
            o.max_drop,
            labels=labels,
            metric=o.metric,
            layer_samples=o.layer_samples,
            cost=self._costs(layers) if o.budget_order == "bytes" else None,
            fits=None if o.max_size is None else self._fits,
            say=ctx.progress,
        )
        params = [p.name for p in mod["main"].params]
        inputs = [[feed[p] for p in params] for feed in feeds]
        score = self.choice.score_outputs
        self.check = lambda run: score([run(arrays)[0] for arrays in inputs])

    def _fits(self, bits: dict[str, int]) -> bool:
        """Whether the mix's weights (the manifest's ratio) are within --int4-max-size."""
        mix = {**self.bits(0), **bits}
        size = _manifest(self.o, self.func, self.weights, {}, {}, mix, {})["size"]
        return size["ratio"] is not None and size["ratio"] <= self.o.max_size

    def _costs(self, layers: list[Layer]) -> dict[str, float]:
        """Bytes each layer adds when the ladder moves it off int4 (to the fallback)."""
        out = {}
        for ly in layers:
            fp32 = int(np.prod(ly.weight_shape)) * 4
            off = fp32 // 4 + 4 * out_channels(ly) if self.o.fallback == "int8" else fp32
            out[ly.name] = off - self.weights[ly.name].nbytes
        return out

    def _table(self, call: relax.Call, consts: dict) -> np.ndarray | None:
        """The int4 embedding table as `lower-int4` dequantizes its gathered rows."""
        o = self.o
        group = o.embedding_group or o.group
        table = embedding_table(call, consts, group)
        if table is None:
            return None
        q = quantize_rtn(table.T, group, o.symmetric, o.clip, scale_dtype=o.scale_dtype)
        return np.ascontiguousarray(q.dequantize().T)

    def bits(self, level: int) -> dict[str, int]:
        """Per layer 4, 8 or 32 at `level` (a 1x1 conv at 8 runs as an int8 matmul of its
        pixels: `lower-int4`'s int8_convs, then the dynamic per-row int8 flow)."""
        bits = {name: 32 for name in self.o.skip}
        bits.update({name: 4 for name in self.weights})
        if self.choice is not None:
            bits.update(self.choice.bits(level))
        return bits

    def plan(self, level: int) -> CompressionPlan:
        o, bits = self.o, self.bits(level)
        reasons = self._reasons(bits)
        opts = _lower_options(o, self.path, [n for n, b in bits.items() if b != 4])
        int8_convs = [n for n, b in bits.items() if b == 8 and n.startswith("conv2d")]
        if int8_convs:
            opts["int8_convs"] = ":".join(int8_convs)
        passes = [make_pass("lower-int4", opts), *self._int8_passes(bits)]
        accuracy = self._accuracy(level)
        manifest = _manifest(o, self.func, self.weights, self.errors, self.seconds, bits, reasons)
        manifest["accuracy"] = accuracy
        choice = self.choice
        more = choice is not None and level < choice.top
        return CompressionPlan(
            MANIFEST_KEY,
            passes,
            manifest,
            format_report(manifest),
            self.check,
            cleanup=self.workdir.cleanup,
            budget=accuracy["fp32"] - o.max_drop if accuracy and o.max_drop is not None else None,
            tighten=(lambda: self.plan(level + 1)) if more else None,
        )

    def _reasons(self, bits: dict[str, int]) -> dict[str, str]:
        chosen = self.bits(self.choice.level) if self.choice else bits
        return {
            name: "skip" if name in self.o.skip
            else ("max-drop" if self.o.max_drop is not None else "max-size") if chosen[name] == b
            else "artifact budget"
            for name, b in bits.items()
            if b != 4
        }  # fmt: skip

    def _accuracy(self, level: int) -> dict | None:
        c = self.choice
        if c is None:
            return None
        return {
            "metric": c.metric,
            "samples": c.samples,
            **c.scores,
            "fallback": c.fallback,
            "level": level,
            "order": c.order,
            "layers": c.rows,
            "seconds": c.seconds,
        }

    def _int8_passes(self, bits: dict[str, int]) -> list[GraphPass]:
        """Dynamic per-row int8 for the layers the budget moved to int8. They run after
        lower-int4, whose int4 layers are no longer matmuls and whose int8 1x1 convs are
        matmuls now: layer names count from 0 again over the matmuls left, in binding order
        (every conv left stays fp32)."""
        if not any(b == 8 for b in bits.values()) or LOWER_INT8 not in registered_passes():
            return []
        windows = window_weights(self.func, self.o)  # int8 convs: no longer conv2d layers
        layers = [
            ly for ly in find_layers(self.func) if bits.get(ly.name) != 4 and ly.name not in windows
        ]
        matmul = [ly.kind == "matmul" or bits.get(ly.name) == 8 for ly in layers]
        left = [ly.name for ly, m in zip(layers, matmul, strict=True) if m]
        renamed = {name: f"matmul_{j}" for j, name in enumerate(left)}
        skip = [renamed[n] for n in left if bits.get(n, 32) == 32]
        convs = len(layers) - len(left)  # every conv left stays fp32
        skip += [f"conv2d_{j}" for j in range(convs)]
        opts = {"mode": "dynamic", "granularity": "row", "embeddings": "false"}
        if skip:
            opts["skip"] = ":".join(skip)
        lower = self.target.pass_options(LOWER_INT8)
        return [make_pass("quantize", opts), make_pass(LOWER_INT8, lower)]


def _lower_options(o: Int4Options, path: Path, skip: list[str]) -> dict[str, str]:
    opts = {
        "group": str(o.group),
        "symmetric": "true" if o.symmetric else "false",
        "weights": str(path),
        "embeddings": "true" if o.embeddings else "false",
        "clip": "true" if o.clip else "false",
        "scale_dtype": o.scale_dtype,
        "embedding_group": str(o.embedding_group or o.group),
        "act": "int8" if o.activations == "int8" else "float32",
        "int8_windows": "true" if o.windows == "int8" else "false",
    }
    if skip:
        opts["skip"] = ":".join(skip)
    return opts


def _calibrated(mod, layers: list[Layer], o: Int4Options, ctx: CompressionContext, errors):
    """{layer: Int4Weight} from calibration: AWQ scaling (--int4-awq), then GPTQ or rounding;
    `errors` gets each layer's output error, plain rounding's beside it."""
    from ..int8.flow import evaluation_target
    from .hessian import RowSample, hessians

    feeds = load_calibration(o.calibration, ctx.inputs, limit=o.samples)
    smooth = any(smoothing(o, ly) for ly in layers)
    what = "awq + " * o.awq + "smooth + " * smooth + o.method
    ctx.progress(f"int4 {what}: {len(layers)} layers, {len(feeds)} calibration feeds")
    target = evaluation_target(ctx.target)
    names = [ly.name for ly in layers]
    sample = RowSample(len(feeds)) if smooth else None
    hs, rows = hessians(mod, feeds, names, target, ctx.progress, o.skip_padding, sample=sample)
    weights: dict[str, Int4Weight] = {}
    meter = Meter(len(layers), f"int4 {what}", ctx.progress, unit="layers", every=0.5)
    for i, ly in enumerate(layers):
        w, h, n_rows = weight_matrix(ly), hs[ly.name], rows[ly.name]
        smoothed = sample is not None and smoothing(o, ly)
        weights[ly.name], alpha = _quantize_layer(
            w, h, n_rows, o, (sample, ly.name) if smoothed else None
        )
        mean_h = h / max(n_rows, 1)  # per-row output error, per channel
        rtn = quantize_rtn(w, o.group, o.symmetric)  # plain rounding: the baseline
        errors[ly.name] = {
            "rtn_mse": round(output_error(w, rtn, mean_h) / w.shape[1], 8),
            "mse": round(output_error(w, weights[ly.name], mean_h) / w.shape[1], 8),
            **({"awq_alpha": alpha} if o.awq else {}),
            **({"smooth_alpha": alpha} if smoothed else {}),
        }
        meter.update(i + 1, ly.name)
    if o.method == "adaround":
        _adaround(mod, layers, weights, feeds, o, target, ctx.progress, (hs, rows), errors)
    return weights


def _adaround(mod, layers, weights, feeds, o: Int4Options, target, progress, hr, errors) -> None:
    """Replaces the round-to-nearest `weights` by AdaRound's (qinputs.py) and records both
    output errors per layer: on the quantized inputs (`adaround`), and on the fp32 inputs
    (`mse`, as GPTQ's)."""
    from .adaround import AdaRoundOptions
    from .qinputs import adaround_model

    a8 = o.activations == "int8"
    opts = AdaRoundOptions(iters=o.adaround_iters)
    windows = window_weights(mod["main"], o)
    learned, errs = adaround_model(mod, layers, weights, feeds, target, a8, opts, progress, windows)
    hs, rows = hr
    for ly in layers:
        weights[ly.name] = learned[ly.name]
        w, mean_h = weight_matrix(ly), hs[ly.name] / max(rows[ly.name], 1)
        errors[ly.name]["mse"] = round(output_error(w, learned[ly.name], mean_h) / w.shape[1], 8)
        errors[ly.name]["adaround"] = errs.get(ly.name)


def _quantize_layer(w: np.ndarray, h: np.ndarray, rows: int, o: Int4Options, sample=None):
    """One layer's int4 weight (and the alpha of AWQ or, with `sample` = (RowSample, layer
    name), of the W4A8 smoothing; None without either)."""

    def rtn(weight: np.ndarray, importance=None) -> Int4Weight:
        return quantize_rtn(
            weight, o.group, o.symmetric, o.clip, importance, scale_dtype=o.scale_dtype
        )

    alpha, s = None, None
    if o.awq:
        s, alpha, _errors = search_scale(w, h, rows, lambda ws: rtn(ws, np.diag(h)))
        w, h = w * s[:, None], scaled_hessian(h, s)
    elif sample is not None and sample[1] in sample[0].maxes:
        found, name = sample[0], sample[1]

        def scaled(ws: np.ndarray, sc: np.ndarray) -> Int4Weight:
            return rtn(ws, np.diag(h) / np.asarray(sc, np.float64) ** 2)

        s, alpha, _errors = search_smooth(w, found.rows(name), found.maxes[name], scaled)
        if alpha == 0:  # no scaling won: no input multiply in the graph
            s = None
        else:
            w, h = w * s[:, None], scaled_hessian(h, s)
    if o.method == "gptq":
        q = quantize_gptq(
            w,
            h,
            o.group,
            o.symmetric,
            o.damp,
            clip=o.clip,
            act_order=o.act_order,
            scale_dtype=o.scale_dtype,
        )
    else:
        q = rtn(w, np.diag(h))
    return (q if s is None else with_input_scale(q, s)), alpha


def _weight_bytes(q: Int4Weight) -> dict:
    zeros = 0 if q.zeros is None else q.zeros.nbytes
    return {"packed": q.packed.nbytes, "scales": q.scales.nbytes, "zeros": zeros}


def _manifest(o: Int4Options, func, weights: dict, errors: dict, seconds, bits, reasons) -> dict:
    """Per-layer bits and bytes, the embedding tables, and the size breakdown."""
    layers = int4_layers(func)
    rows = []
    total = {"fp32": 0, "packed": 0, "scales": 0, "zeros": 0, "int8": 0, "kept_fp32": 0}
    for ly in layers:
        fp32 = int(np.prod(ly.weight_shape)) * 4
        total["fp32"] += fp32
        b = bits.get(ly.name, 32)
        row = {"layer": ly.name, "what": ly.describe(), "bits": b, "fp32_bytes": fp32}
        if b != 4:
            n = out_channels(ly)
            size = fp32 // 4 + 4 * n if b == 8 else fp32  # int8: one byte, a scale a channel
            total["int8" if b == 8 else "kept_fp32"] += size
            rows.append({**row, "bytes": {"weights": size}, "reason": reasons.get(ly.name)})
            continue
        parts = _weight_bytes(weights[ly.name])
        for key, v in parts.items():
            total[key] += v
        rows.append({**row, "group": o.group, "bytes": parts, **errors.get(ly.name, {})})
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
    for ly in window_convs(func, o.skip) if o.windows == "int8" else []:
        fp32 = int(np.prod(ly.weight_shape)) * 4
        total["fp32"] += fp32
        total["int8_windows"] = total.get("int8_windows", 0) + fp32 // 4 + 4 * out_channels(ly)
    stored = sum(v for k, v in total.items() if k != "fp32")
    total["ratio"] = round(stored / total["fp32"], 4) if total["fp32"] else None
    return {
        "scheme": "int4",
        "settings": {**asdict(o), "skip": list(o.skip)},
        "kernels": "int4-weight matmul (lower-int4; materialize-int4 where the target has it)",
        "activations": o.activations,
        "layers": rows,
        "int4_layers": sum(r["bits"] == 4 for r in rows),
        "int8_layers": sum(r["bits"] == 8 for r in rows),
        "embeddings": tables,
        "size": total,
        "seconds": seconds,
    }


def format_report(m: dict) -> str:
    """The compile output: per-layer bits and bytes, the size breakdown."""
    from ...tables import format_table

    rows = []
    for r in m["layers"]:
        b = r.get("bytes")
        size = sum(b.values()) if b else r["fp32_bytes"]
        err = f"{r['rtn_mse']:.3g} -> {r['mse']:.3g}" if "mse" in r else "-"
        why = r.get("reason") or ""
        rows.append([r["layer"], r["what"], r["bits"], r["fp32_bytes"], size, err, why])
    for t in m["embeddings"]:
        rows.append(
            ["embedding", f"take {t['shape']}", 4, t["fp32_bytes"], sum(t["bytes"].values())]
            + ["-", ""]
        )
    s, o = m["size"], m["settings"]
    head = (
        f"int4 ({o['method']}, group {o['group']}, "
        f"{'symmetric' if o['symmetric'] else 'asymmetric'}, "
        f"{'W4A8' if o.get('activations') == 'int8' else 'W4 x fp32'}): {m['int4_layers']}/"
        f"{len(m['layers'])} layers int4, {m.get('int8_layers', 0)} int8, "
        f"{len(m['embeddings'])} embedding table(s)"
    )
    cols = ["layer", "op", "bits", "fp32 bytes", "bytes", "output MSE rounding -> chosen"]
    cols.append("why not int4")
    tail = (
        f"weights {s['fp32']} B fp32 -> {s['packed']} packed + {s['scales']} scales + "
        f"{s['zeros']} zero points + {s.get('int8', 0)} int8 + "
        f"{s.get('int8_windows', 0)} int8 window convs + {s['kept_fp32']} kept fp32 "
        f"(ratio {s['ratio']})"
    )
    lines = [head, format_table(cols, rows), tail]
    a = m.get("accuracy")
    if a:
        artifact = f", artifact {a['artifact']:.2f}" if "artifact" in a else ""
        lines.append(
            f"accuracy ({a['metric']}, {a['samples']} feeds): fp32 {a['fp32']:.2f}, every layer "
            f"int4 {a['all_int4']:.2f}, chosen {a['final']:.2f}{artifact}"
        )
    return "\n".join(lines)
