"""The quantization step of `graphopt compile --quantize int8`: calibrate, analyze, decide, and
the passes to run (`quantize{...}`, then `lower-int8` when that pass is registered).

compile: graph passes -> quantize_step (this file) -> target stages. The step returns the
passes for the compiler to run (so instruments, --dump-dir and the pass log see them) and the
manifest's "quantization" entry: settings, ranges, per-layer decisions, accuracy report.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tvm

from ...binding_graph import shape_dims
from ...build import resolve_target
from ...errors import SymbolicShapeError
from ...pass_infra import GraphPass, make_pass, registered_passes
from ...target_infra import Target, host_target
from ..common.budget import eval_feeds as load_eval_feeds
from ..common.data import load_calibration
from ..common.errors import CalibrationError
from ..common.layers import Layer, find_layers
from .bias_correction import KEY as BIAS_KEY
from .calibrate import calibrate, calibration_runner
from .equalize import KEY as EQ_KEY
from .equalize import equalize_scales, find_pairs, scaled_module
from .probe import ProbeRunner, probe_module
from .ranges import write_ranges
from .sensitivity import Sensitivity, Settings, analyze
from .speed import LayerTiming, Timer
from .speed import measure as measure_speed

LOWER_PASS = "lower-int8"


@dataclass(frozen=True)
class QuantOptions:
    """What `--quantize int8 ...` asks for."""

    calibration: str | None = None
    method: str = "mse"
    per_channel: bool = True
    act_dtype: str = "int8"
    mode: str = "static"  # static | dynamic
    max_drop: float | None = None
    eval_data: str | None = None  # .npz with x (and y) for --max-drop and the accuracy report
    samples: int = 64  # calibration feeds used
    sensitivity: bool = True
    sensitivity_samples: int = 32
    # feeds each layer's "alone" sensitivity row is measured on (None: all of them); the
    # scores and the --max-drop steps use all sensitivity_samples
    sensitivity_layer_samples: int | None = 8
    metric: str = "auto"  # auto | accuracy | top1_agreement | min_cosine
    granularity: str = "tensor"  # dynamic mode: tensor | row
    integer_kernels: bool = True  # run lower-int8 when registered; False keeps fake-quant
    bias_correction: bool = True  # static: subtract each channel's mean quantization error
    equalize: bool = True  # static: stretch small channels of depthwise inputs (equalize.py)
    # time each layer's int8 vs fp32 kernel; slower ones stay fp32. Off by default: layer by
    # layer on a loaded machine it kept 36/53 MobileNetV2 layers fp32 and the model got slower
    speed_check: bool = False
    speed_margin: float = 0.10  # int8 counts as slower beyond (1 + margin) x fp32 (noise)


@dataclass
class QuantStep:
    passes: list[GraphPass]
    manifest: dict
    table: str = ""
    workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    # Scores a built executable on the evaluation feeds (the metric --max-drop budgets).
    check: Callable[[Callable], float] | None = field(default=None, repr=False)
    # The lowest artifact score --max-drop accepts (fp32 score - max drop); None: no budget.
    budget: float | None = None
    # The same step with one more layer kept fp32 (the most sensitive int8 one); None if none.
    tighten: Callable[[], QuantStep | None] | None = field(default=None, repr=False)


def evaluation_target(target: Target) -> Target:
    """Where calibration and sensitivity runs build and run: the deployment target when this
    machine runs it, else this host's own target (x86 or arm). Ranges do not depend on the
    target, and a cross target (arm on an x86 host) cannot run here."""
    return target if target.availability().can_run else host_target()


def int8_is_slower(layer: Layer, timings: Mapping[str, LayerTiming] | None) -> bool | None:
    """True when the measured int8 kernel of `layer` is slower than its fp32 kernel (beyond the
    noise margin); None when it was not measured (a cross target, dynamic mode, fake-quant)."""
    t = (timings or {}).get(layer.name)
    return None if t is None else t.slower


def speed_check(
    mod: tvm.IRModule,
    names: Sequence[str],
    opts: QuantOptions,
    target: Target,
    lowered: bool,
    timer: Timer | None,
    say: Callable[[str], None],
) -> tuple[dict[str, LayerTiming], dict]:
    """Per-layer int8/fp32 kernel times on the compile target, and the manifest note."""
    note: dict = {"margin": opts.speed_margin}
    why = None
    if not opts.speed_check:
        why = "off (--speed-check turns it on)"
    elif opts.mode != "static":
        why = "dynamic mode: not measured (run-time activation scales)"
    elif not lowered:
        why = "fake-quant kernels: nothing to compare"
    elif any(_symbolic(p) for p in mod["main"].params):
        why = "symbolic dims: kernel times need one static shape (none measured)"
    elif not target.availability().can_run:
        why = f"cross target {target.name}: kernel times need the target itself (none measured)"
    elif not names:
        why = "no int8 layers"
    if why:
        return {}, {**note, "skipped": why}
    try:
        timings = measure_speed(
            mod,
            names,
            target=target,
            timer=timer,
            margin=opts.speed_margin,
            progress=say,
        )
    except Exception as err:  # noqa: BLE001 - a kernel pair that fails to build: keep int8, say so
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        say(f"speed check failed ({first}); every layer stays int8")
        return {}, {**note, "skipped": f"failed: {first}"}
    note["slower"] = [n for n, t in timings.items() if t.slower]
    return timings, note


def quantize_step(
    mod: tvm.IRModule,
    inputs: Sequence,
    opts: QuantOptions,
    target: Target | str = "x86",
    target_options: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    timer: Timer | None = None,
) -> QuantStep:
    """Calibrate, analyze and decide; `timer` replaces the speed check's clock (tests)."""
    say = progress or (lambda _m: None)
    _check(opts)
    target = resolve_target(target, target_options)
    layers = find_layers(mod["main"])
    lower_options = _lower_options(layers, target)
    feeds = (
        load_calibration(opts.calibration, inputs, limit=opts.samples) if opts.calibration else []
    )
    say(f"quantize: {len(layers)} quantizable layers, {len(feeds)} calibration feeds")
    workdir = tempfile.TemporaryDirectory(prefix="graphopt-quant-")
    run_target = evaluation_target(target)
    ranges, scales, probe, equalized = {}, {}, None, mod
    eval_feeds, labels = load_eval_feeds(opts.eval_data, inputs, feeds, opts.sensitivity_samples)
    wants_sensitivity = (opts.sensitivity or opts.max_drop is not None) and eval_feeds and layers
    settings = Settings(opts.mode, opts.per_channel, opts.act_dtype, opts.granularity)
    clock = time.perf_counter()
    if opts.mode == "static" and layers:
        probe = _calibration_probe(mod, settings, bool(wants_sensitivity), run_target, say)
        equalized, ranges, scales = _static_ranges(mod, feeds, opts, run_target, say, probe)
    seconds = {"calibration": time.perf_counter() - clock}
    ranges_path = Path(workdir.name) / "ranges.json"
    write_ranges(ranges_path, ranges, opts.method)
    sens: Sensitivity | None = None
    if wants_sensitivity:
        sens = analyze(
            mod,
            ranges,
            settings,
            eval_feeds,
            labels=labels,
            max_drop=opts.max_drop,
            metric=opts.metric,
            target=run_target,
            progress=say,
            layer_samples=opts.sensitivity_layer_samples,
            probe=probe if isinstance(probe, ProbeRunner) else None,
            scales=scales,
        )
        seconds["sensitivity"] = sum(sens.seconds.values())
    lowered = opts.integer_kernels and LOWER_PASS in registered_passes()
    skip = list(sens.skip) if sens else []
    candidates = [
        ly.name
        for ly in layers
        if ly.name not in skip and (opts.mode != "static" or ly.name in ranges)
    ]
    clock = time.perf_counter()
    timings, speed = speed_check(equalized, candidates, opts, target, lowered, timer, say)
    if timings:
        seconds["speed_check"] = time.perf_counter() - clock
    skip += [ly.name for ly in layers if ly.name in candidates and int8_is_slower(ly, timings)]
    params = [p.name for p in mod["main"].params]
    decided = _Decided(
        opts, layers, ranges, ranges_path, scales, sens, timings, speed, lowered, workdir
    )
    decided.eval_inputs = [[feed[p] for p in params] for feed in eval_feeds]
    decided.lower_options = lower_options
    decided.seconds = {k: round(v, 2) for k, v in seconds.items()}
    return decided.step(skip, {})


def _lower_options(layers: Sequence[Layer], target: Target) -> dict[str, str]:
    """The target's lower-int8 options. int8 conv kernels take symbolic sizes (batch, height,
    width) in NHWC only: a target whose int8 convs are NCHW kernels with static shapes (ARM)
    lowers a model with a symbolic conv size to the NHWC kernels when it can build them
    (`Target.int8_nhwc_convs`); elsewhere such a conv would stay fake-quant (fp32 math,
    slower than fp32): one line instead."""
    options = target.pass_options(LOWER_PASS)
    convs = [ly.name for ly in layers if ly.kind == "conv2d" and _symbolic(ly.data)]
    if not convs or options.get("layout") == "NHWC":
        return options
    if target.int8_nhwc_convs:
        return {**options, "layout": "NHWC"}
    raise SymbolicShapeError(
        f"--quantize int8 on target {target.name} has no int8 conv kernel for symbolic "
        f"sizes ({len(convs)} convolutions, {convs[0]}, ...): pin the batch, height and "
        "width (--input-shape NAME=1,C,H,W); symbolic sequence lengths work"
    )


def _symbolic(expr, first: int = 0) -> bool:
    """Whether the dims of `expr` from `first` on are not all static."""
    dims = shape_dims(expr)
    return dims is None or any(isinstance(d, str) for d in dims[first:])


def _calibration_probe(mod, settings: Settings, sensitivity: bool, run_target: Target, say):
    """The build calibration runs (and sensitivity after it, `probe.py`): the probe graph
    when sensitivity will run, else the plain fp32 graph with the taps (quicker to build)."""
    if sensitivity:
        say("calibrate: building the probe graph (every layer input an output, any layer int8)")
        return ProbeRunner(probe_module(mod, settings), run_target)
    say("calibrate: building the fp32 graph with every layer input as an output")
    return calibration_runner(mod, run_target)


def _static_ranges(mod, feeds, opts: QuantOptions, run_target: Target, say, probe):
    """Calibrated ranges (with bias corrections); depthwise inputs equalized first when asked.
    Returns the module calibration ran on last, the ranges and the equalization scales."""
    runner = probe.taps if isinstance(probe, ProbeRunner) else probe

    pairs = find_pairs(mod) if opts.equalize else []
    found: dict = {"mod": mod, "scales": {}}

    def equalize(first: dict):
        """Round 1's channel maxima -> the equalized module (calibrate observes it again)."""
        scales = {
            p.consumer.name: equalize_scales(
                p, first[p.consumer.name]["channel_max"], first[p.consumer.name]["input"][1]
            )
            for p in pairs
        }
        found.update(mod=scaled_module(mod, scales), scales=scales)
        return found["mod"], scales

    ranges = calibrate(
        mod,
        feeds,
        opts.method,
        act_dtype=opts.act_dtype,
        target=run_target,
        progress=say,
        per_channel=opts.per_channel,
        runner=runner,
        bias_correction=opts.bias_correction,
        equalize=equalize if pairs else None,
    )
    for name, k in found["scales"].items():
        ranges[name][EQ_KEY] = [float(v) for v in k]
    return found["mod"], ranges, found["scales"]


@dataclass
class _Decided:
    """What calibration, sensitivity and the speed check found; `step(skip)` turns it into the
    passes and manifest for one set of fp32 layers, so the artifact check can ask for more."""

    opts: QuantOptions
    layers: list[Layer]
    ranges: dict
    ranges_path: Path
    scales: dict
    sens: Sensitivity | None
    timings: dict
    speed: dict
    lowered: bool
    workdir: tempfile.TemporaryDirectory
    eval_inputs: list = field(default_factory=list)
    lower_options: dict = field(default_factory=dict)  # the target's lower-int8 options
    seconds: dict = field(default_factory=dict)  # calibration, sensitivity (+ search), speed

    def step(self, skip: list[str], reasons: dict[str, str]) -> QuantStep:
        decisions = [self._decision(layer, skip, reasons) for layer in self.layers]
        manifest = self._manifest(decisions, skip)
        budget = None
        if self.sens is not None and self.opts.max_drop is not None:
            budget = self.sens.fp32_score - self.opts.max_drop
        return QuantStep(
            self._passes(skip),
            manifest,
            format_report(manifest),
            self.workdir,
            self._check(),
            budget,
            lambda: self._tighten(skip, reasons),
        )

    def _tighten(self, skip: list[str], reasons: dict[str, str]) -> QuantStep | None:
        """The same plan with the most sensitive int8 layer left kept fp32; None if none left."""
        rows = sorted(self.sens.rows, key=lambda r: r["sqnr_db"]) if self.sens else []
        for row in rows:
            if row["layer"] not in skip:
                name = row["layer"]
                return self.step([*skip, name], {**reasons, name: "artifact budget"})
        return None

    def _decision(self, layer: Layer, skip: list[str], reasons: dict[str, str]) -> dict:
        reason = reasons.get(layer.name)
        if reason is None and self.sens is not None and layer.name in self.sens.skip:
            reason = "max-drop"
        elif reason is None and self.opts.mode == "static" and layer.name not in self.ranges:
            reason = "no range"
        elif reason is None and layer.name in skip:
            reason = "int8 kernel slower"
        t = self.timings.get(layer.name)
        return {
            "layer": layer.name,
            "what": layer.describe(),
            "precision": "fp32" if reason else "int8",
            **({"reason": reason} if reason else {}),
            **({"fp32_ms": t.to_json()["fp32_ms"], "int8_ms": t.to_json()["int8_ms"]} if t else {}),
        }

    def _passes(self, skip: list[str]) -> list[GraphPass]:
        opts, path = self.opts, str(self.ranges_path)
        quant_opts = {
            "mode": opts.mode,
            "per_channel": "true" if opts.per_channel else "false",
            "act_dtype": opts.act_dtype,
        }
        if opts.mode == "dynamic" and opts.granularity != "tensor":
            quant_opts["granularity"] = opts.granularity
        if opts.mode == "static":
            quant_opts["ranges"] = path
        if skip:
            quant_opts["skip"] = ":".join(skip)
        passes = [make_pass("quantize", quant_opts)]
        if any(BIAS_KEY in r for r in self.ranges.values()):
            bc_opts = {"ranges": path, **({"skip": ":".join(skip)} if skip else {})}
            passes.insert(0, make_pass("bias-correction", bc_opts))
        if self.scales:  # exact in fp32 up to the calibrated maxima: applies whatever stays fp32
            passes.insert(0, make_pass("equalize", {"ranges": path}))
        if self.lowered:
            passes.append(make_pass(LOWER_PASS, self.lower_options))
        return passes

    def _manifest(self, decisions: list[dict], skip: list[str]) -> dict:
        ranges = self.ranges
        accuracy = self.sens.to_json() if self.sens else None
        if accuracy is not None:
            layer_names = {d["layer"] for d in decisions}
            accuracy["kept_fp32"] = [
                d["layer"] for d in decisions if d.get("reason") in ("max-drop", "artifact budget")
            ] + [name for name in skip if name not in layer_names]  # residual joins
        return {
            "scheme": "int8",
            "settings": dict(asdict(self.opts)),
            "kernels": "integer (lower-int8)"
            if self.lowered
            else "fake-quant (fp32 math on QDQ values)",
            "layers": decisions,
            "int8_layers": sum(d["precision"] == "int8" for d in decisions),
            # the per-channel vectors stay in the ranges file (the pipeline's input), not here
            "ranges": {
                n: {k: v for k, v in r.items() if k not in (BIAS_KEY, EQ_KEY)}
                for n, r in ranges.items()
            },
            "bias_corrected": sorted(
                n for n, r in ranges.items() if BIAS_KEY in r and n not in skip
            ),
            "equalized": sorted(self.scales),
            "accuracy": accuracy,
            "speed_check": self.speed,
            # where the quantization step's time went (the sensitivity's own split, build /
            # per-layer rows / --max-drop search, is under accuracy.seconds)
            "seconds": self.seconds,
        }

    def _check(self) -> Callable | None:
        if self.sens is None or self.sens.score_outputs is None:
            return None
        score, inputs = self.sens.score_outputs, self.eval_inputs
        return lambda run: score([run(arrays)[0] for arrays in inputs])


def imported_step(mod: tvm.IRModule, target: Target | None = None) -> QuantStep | None:
    """A model that arrives quantized (QDQ or QLinear* ONNX): restore its int8 weights
    (`quantize{mode=imported}`) and lower to integer kernels, no calibration. None if the graph
    has no quantize op."""
    from ... import _tvm

    if "relax.quantize" not in _tvm.op_counts(mod):
        return None
    passes = [make_pass("quantize", {"mode": "imported"})]
    lowered = LOWER_PASS in registered_passes()
    if lowered:
        passes.append(make_pass(LOWER_PASS, target.pass_options(LOWER_PASS) if target else {}))
    manifest = {
        "scheme": "int8",
        "source": "already-quantized model (its own scales and zero points)",
        "kernels": "integer (lower-int8)" if lowered else "fake-quant (fp32 math on QDQ values)",
    }
    return QuantStep(passes, manifest)


def _check(opts: QuantOptions) -> None:
    if opts.mode not in ("static", "dynamic"):
        raise CalibrationError(f"--quant-mode must be static or dynamic, not '{opts.mode}'")
    if opts.mode == "static" and not opts.calibration:
        raise CalibrationError(
            "--quantize int8 needs --calibration DATA (an .npz of samples, or a directory of "
            ".npy files or images); or use --quant-mode dynamic"
        )
    from ..common.budget import check_budget_options

    check_budget_options(opts)


def format_report(q: dict) -> str:
    """The compile output: per-layer decisions with sensitivity, and the accuracy summary."""
    from ...tables import format_table

    if "layers" not in q:
        return f"int8 ({q.get('source', '')}; {q['kernels']})"
    acc = q.get("accuracy")
    sens = {r["layer"]: r for r in acc["layers"]} if acc else {}
    rows = []
    for d in q["layers"]:
        s = sens.get(d["layer"], {})
        rows.append(
            [
                d["layer"],
                d["what"],
                s.get("sqnr_db", "-"),
                s.get("cosine", "-"),
                d.get("fp32_ms", "-"),
                d.get("int8_ms", "-"),
                d["precision"] + (f" ({d['reason']})" if "reason" in d else ""),
            ]
        )
    left = q.get("pass_stats", {}).get(LOWER_PASS, {}).get("left", 0)
    fake = f" ({left} as fake-quant: no integer kernel for them)" if left else ""
    lines = [
        f"int8 ({q['settings']['mode']}, {q['kernels']}): {q['int8_layers']}/{len(q['layers'])} "
        f"layers int8{fake}",
        format_table(
            ["layer", "op", "SQNR dB (alone)", "cosine (alone)", "fp32 ms", "int8 ms", "precision"],
            rows,
        ),
    ]
    speed = q.get("speed_check") or {}
    if "skipped" in speed:
        lines.append(f"speed check: {speed['skipped']}")
    elif speed:
        lines.append(
            f"speed check (kernel medians, int8 slower beyond +{speed['margin']:.0%}): "
            f"{len(speed['slower'])} layer(s) kept fp32"
        )
    if acc:
        lines.append(
            f"{acc['metric']} on {acc['samples']} feeds: fp32 {acc['fp32']:.2f}, all int8 "
            f"{acc['all_int8']:.2f}, chosen {acc['final']:.2f}"
            + (f", artifact {acc['artifact']:.2f}" if "artifact" in acc else "")
            + (f" (kept fp32: {', '.join(acc['kept_fp32'])})" if acc["kept_fp32"] else "")
        )
    return "\n".join(lines)
