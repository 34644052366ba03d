"""The `graphopt` command line: compile | run | bench | report | passes | targets.

User errors print one line (`error: ...`) and exit non-zero; set GRAPHOPT_DEBUG=1 to see the
traceback too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, env
from .errors import GraphoptError, InputError, PassFailure

_REDRAWING = {"active": False}


def _eprint(msg: str) -> None:
    """Progress on stderr: a ProgressLine redraws one terminal line, anything else gets its
    own line; piped, every message is a plain line."""
    from .progress import ProgressLine

    tty = sys.stderr.isatty()
    if tty and isinstance(msg, ProgressLine):
        sys.stderr.write("\r" + msg + "\033[K")
        sys.stderr.flush()
        _REDRAWING["active"] = True
        return
    if tty and _REDRAWING["active"]:
        sys.stderr.write("\n")
        _REDRAWING["active"] = False
    print(msg, file=sys.stderr, flush=True)


def _key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InputError(f"{flag} '{item}' is not key=value")
        out[key] = value
    return out


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile_model
    from .instrument import DumpDir, PrintAfter, TimePasses

    instruments: list[object] = []
    if args.print_after or args.print_after_all or args.print_after_change:
        instruments.append(
            PrintAfter(args.print_after, args.print_after_all, args.print_after_change)
        )
    if args.dump_dir:
        instruments.append(DumpDir(Path(args.dump_dir)))
    timer = TimePasses() if args.time_passes else None
    if timer:
        instruments.append(timer)
    opts = _compile_options(
        args,
        tuning_db=Path(args.db) if args.db else None,
        instruments=instruments,
        verify_each=args.verify_each,
        compression=_compression_methods(args),
    )
    art = compile_model(args.model, args.output, opts, progress=None if args.quiet else _eprint)
    if timer:
        print(timer.table())
    if "quantization" in art.manifest:
        from .compress.int8.flow import format_report

        print(format_report(art.manifest["quantization"]))
    if "precision" in art.manifest:
        from .compress.precision.report import format_report as precision_report

        print(precision_report(art.manifest["precision"]))
    if "int4" in art.manifest:
        from .compress.int4.method import format_report as int4_report

        print(int4_report(art.manifest["int4"]))
    _print_pruning(art.manifest)
    report = art.manifest["report"]
    print(
        f"compiled {args.model} -> {args.output}/ for {args.target}: "
        f"{report['kernels']} kernels, {report['flops'] / 1e6:.2f} MFLOPs"
    )
    return 0


def _print_pruning(manifest: dict) -> None:
    """Per-layer sparsity, weights and what the artifact stores; the channels kept per
    region for structured pruning (compile and report)."""
    if "pruning" in manifest:
        from .compress.prune.report import format_report, storage_line

        print(format_report(manifest["pruning"], storage_line(manifest)))
    else:
        from .compress.prune.report import sparsity_line

        line = sparsity_line(manifest)
        if line:
            print(line)
    if "channels" in manifest:
        from .compress.channels.method import format_report as channels_report

        print(channels_report(manifest["channels"]))


def _compression_methods(args: argparse.Namespace) -> list:
    """The compression methods the flags select, in the order they run: pruning first, then
    quantization (of the pruned weights)."""
    from .compress.int8.method import Int8

    methods = [_prune_method(args)] if args.prune is not None else []
    if args.quantize == "int4":
        methods.append(_int4_method(args))
    else:
        quant = _quant_options(args)
        methods += [Int8(quant)] if quant is not None else []
    return methods + ([_precision_method(args)] if args.precision else [])


def _precision_method(args: argparse.Namespace):
    """`--precision bf16|fp16|mixed` (docs/PRECISION.md): after any quantization, on the
    layers it left fp32, with the same --max-drop budget."""
    from .compress.precision.method import Precision, PrecisionOptions, check_options

    options = PrecisionOptions(
        precision=args.precision,
        skip=_layer_list(args.precision_skip),
        edges=args.precision_edges,
        embeddings=args.precision_embeddings,
        attention=args.precision_attention,
        max_drop=args.max_drop,
        calibration=args.calibration,
        eval_data=args.eval,
        metric=_metric_name(args.quant_metric),
    )
    check_options(options, args.target)
    return Precision(options)


def _default_block(args: argparse.Namespace) -> str:
    """16 output channels of one input channel; with int8, of 4 (the int8 sparse kernels'
    block on VNNI and ARM sdot, and two of AVX2's 8x2)."""
    return "16x4" if args.quantize == "int8" else "16"


def _prune_method(args: argparse.Namespace):
    """`--prune SPEC` and its flags (docs/SPARSITY.md). `--max-drop` and `--eval` budget the
    pruning when no quantization is asked for (with `--quantize` they are its budget)."""
    from .compress.prune.method import Prune, PruneOptions
    from .compress.prune.spec import parse_spec

    alone = args.quantize is None
    if args.prune.strip().startswith("macs="):
        return _channels_method(args, alone)
    return Prune(
        PruneOptions(
            spec=parse_spec(args.prune, args.prune_block or _default_block(args)),
            method=args.prune_method or ("sparsegpt" if args.calibration else "magnitude"),
            calibration=args.calibration,
            samples=args.calib_samples,
            damp=args.prune_damp,
            bias_correction=args.prune_bias_correction,
            sequential=args.prune_sequential,
            pull=args.prune_pull,
            skip=_layer_list(args.prune_skip),
            max_drop=args.max_drop if alone else None,
            eval_data=args.eval if alone else None,
            metric=_metric_name(args.quant_metric),
        )
    )


def _channels_method(args: argparse.Namespace, alone: bool):
    """`--prune macs=X`: structured pruning of hidden channels (docs/SPARSITY.md)."""
    from .compress.channels.method import ChannelOptions, Channels, check_options

    text, *rest = args.prune.strip()[len("macs=") :].split(",")
    try:
        macs = float(text)
    except ValueError:
        raise InputError(f"--prune macs={text}: not a number (macs=0.75 keeps 75%)") from None
    settings = {"regions": "all", "distill": "0"}
    for item in rest:
        key, _, value = item.partition("=")
        if key.strip() not in settings:
            raise InputError(
                f"--prune macs: unknown setting {item!r} "
                "(regions=all|channels|heads, distill=STEPS)"
            )
        settings[key.strip()] = value.strip()
    if not settings["distill"].isdigit():
        raise InputError(f"--prune macs: distill={settings['distill']}: a number of steps")
    options = ChannelOptions(
        macs,
        calibration=args.calibration,
        samples=args.calib_samples,
        eval_data=args.eval if alone else None,
        max_drop=args.max_drop if alone else None,
        metric=_metric_name(args.quant_metric),
        sequential=args.prune_sequential,
        kinds=settings["regions"],
        distill=int(settings["distill"]),
    )
    check_options(options)
    return Channels(options)


def _int4_method(args: argparse.Namespace):
    """`--quantize int4` and its flags (docs/INT4.md)."""
    from .compress.int4.method import Int4, Int4Options, check_options

    options = Int4Options(
        method=args.int4_method or "auto",
        group=args.group_size,
        symmetric=args.int4_symmetric,
        calibration=args.calibration,
        samples=args.calib_samples,
        embeddings=args.int4_embeddings,
        clip=args.int4_clip,
        act_order=args.int4_act_order,
        scale_dtype=args.int4_scale_dtype,
        embedding_group=args.int4_embedding_group,
        skip=_layer_list(args.int4_skip),
        awq=args.int4_awq,
        smooth=args.int4_smooth,
        activations=args.int4_activations,
        max_drop=args.max_drop,
        fallback=args.int4_fallback,
        budget_order=args.int4_budget_order,
        windows=args.int4_windows,
        max_size=args.int4_max_size,
        eval_data=args.eval,
        metric=_metric_name(args.quant_metric),
    )
    check_options(options)  # before the import: a bad flag costs nothing
    return Int4(options)


def _layer_list(text: str | None) -> tuple[str, ...]:
    """Layer names from a comma-separated flag (`matmul_3,conv2d_0`)."""
    return tuple(filter(None, (text or "").split(",")))


def _metric_name(flag: str) -> str:
    return {"top1": "top1_agreement", "cosine": "min_cosine"}.get(flag, flag)


def _quant_options(args: argparse.Namespace):
    """`--quantize int8` and its flags; None without --quantize (flags alone are an error)."""
    from .compress.int8.flow import QuantOptions

    if args.quantize is None:
        given = [f for f in ("calibration", "max_drop", "eval") if getattr(args, f) is not None]
        if given and args.prune is None and not args.precision:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise InputError(f"{flags} only apply with --quantize int8 or int4, or --prune")
        return None
    return QuantOptions(
        calibration=args.calibration,
        method=args.calib_method,
        per_channel=args.per_channel,
        act_dtype=args.act_dtype,
        mode=args.quant_mode,
        max_drop=args.max_drop,
        eval_data=args.eval,
        samples=args.calib_samples,
        integer_kernels=args.int8_kernels,
        speed_check=args.speed_check,
        bias_correction=args.bias_correction,
        equalize=args.equalize,
        granularity=args.dynamic_granularity,
        metric=_metric_name(args.quant_metric),
    )


def _add_quant_options(parser: argparse.ArgumentParser) -> None:
    q = parser.add_argument_group("int8 quantization (docs/INT8.md)")
    q.add_argument("--quantize", choices=["int8", "int4"], help="post-training quantization scheme")
    q.add_argument("--calibration", metavar="DATA", help=".npz of samples, .npy or image dir")
    q.add_argument(
        "--calib-method",
        choices=["minmax", "percentile", "entropy", "mse"],
        default="mse",
        help="activation range observer (default mse)",
    )
    q.add_argument("--calib-samples", type=int, default=64, help="calibration feeds (default 64)")
    q.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per-output-channel weight scales (default on)",
    )
    q.add_argument("--act-dtype", choices=["int8", "uint8"], default="int8")
    q.add_argument(
        "--quant-mode",
        choices=["static", "dynamic"],
        default="static",
        help="static: calibrated activation ranges; dynamic: ranges at run time (transformers)",
    )
    q.add_argument(
        "--dynamic-granularity",
        choices=["row", "tensor"],
        default="row",
        help="dynamic mode: one run-time scale per row/token (default) or per tensor",
    )
    q.add_argument(
        "--max-drop",
        type=float,
        metavar="X",
        help="keep the most sensitive layers fp32 until the metric drops <= X points",
    )
    q.add_argument("--eval", metavar="DATA.npz", help="x (and labels y) for --max-drop/report")
    q.add_argument(
        "--quant-metric",
        choices=["auto", "accuracy", "top1", "cosine"],
        default="auto",
        help="what --max-drop budgets (auto: accuracy with labels, top1 for [N, classes])",
    )
    switches = [  # (flag, default, help); each also has its --no- form
        (
            "--int8-kernels",
            True,
            "lower QDQ to integer kernels (lower-int8) when available; else fake-quant",
        ),
        (
            "--bias-correction",
            True,
            "static: subtract each channel's mean quantization error from its bias (default on)",
        ),
        (
            "--equalize",
            True,
            "static: rescale depthwise inputs' small channels into the int8 range (default on)",
        ),
        (
            "--speed-check",
            False,
            "time each layer's int8 vs fp32 kernel here; slower int8 layers stay fp32 (off)",
        ),
    ]
    for flag, default, text in switches:
        q.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
    _add_int4_options(parser)
    _add_prune_options(parser)
    _add_precision_options(parser)


def _add_precision_options(parser: argparse.ArgumentParser) -> None:
    q = parser.add_argument_group("16-bit precision (--precision, docs/PRECISION.md)")
    q.add_argument(
        "--precision",
        choices=["bf16", "fp16", "mixed"],
        help="matmuls and 1x1 convs with 16-bit weights and activations, fp32 sums (CPU); "
        "mixed: bf16 where --max-drop allows",
    )
    q.add_argument("--precision-skip", metavar="LAYERS", help="layers kept fp32 (matmul_3,...)")
    q.add_argument(
        "--precision-edges",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also the first and last layer 16-bit without a budget (default: kept fp32)",
    )
    q.add_argument(
        "--precision-embeddings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="16-bit embedding tables (gathers from a constant of 1 MiB or more; default on)",
    )
    q.add_argument(
        "--precision-attention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 attention (-O3's fused attention, x86 with AVX512_BF16; default on)",
    )


def _add_prune_options(parser: argparse.ArgumentParser) -> None:
    q = parser.add_argument_group("pruning (--prune, docs/SPARSITY.md)")
    q.add_argument(
        "--prune",
        metavar="SPEC",
        help="zero weights of matmuls and 1x1 convs: unstructured=0.5, block=0.7 or 2:4; or "
        "remove channels and attention heads: "
        "macs=0.75[,regions=all|channels|heads][,distill=STEPS]",
    )
    q.add_argument(
        "--prune-method",
        choices=["sparsegpt", "magnitude"],
        help="sparsegpt: OBS masks and weight updates from --calibration (the default with "
        "it); magnitude: the smallest weights",
    )
    q.add_argument(
        "--prune-block",
        default=None,
        metavar="BxD",
        help="block=...: output x input channels per zero block (default 16, what the x86 "
        "kernels skip; 16x4 with --quantize int8, what the int8 sparse kernels skip)",
    )
    q.add_argument(
        "--prune-damp",
        type=float,
        default=0.01,
        help="sparsegpt: Hessian damping, times its mean diagonal (default 0.01)",
    )
    q.add_argument(
        "--prune-sequential",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sparsegpt and macs=: layer by layer on the pruned model's inputs, refitted toward "
        "the dense model's outputs (default on); off: every layer from the dense model's inputs",
    )
    q.add_argument(
        "--prune-pull",
        type=float,
        default=0.1,
        help="sequential refit: pull toward the original weights, times H's mean diagonal",
    )
    q.add_argument(
        "--prune-skip", metavar="LAYERS", help="comma-separated layers left dense (conv2d_3,...)"
    )
    q.add_argument(
        "--prune-bias-correction",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="subtract each pruned layer's mean output shift from its bias (needs --calibration)",
    )


def _add_int4_options(parser: argparse.ArgumentParser) -> None:
    q = parser.add_argument_group("int4 weights (--quantize int4, docs/INT4.md)")
    q.add_argument(
        "--int4-method",
        choices=["gptq", "adaround", "rtn"],
        default=None,
        help="gptq: error-compensated from --calibration (the default with it for models "
        "without convs); adaround: learned up/down rounding on the int4 model's inputs (the "
        "default with --calibration for CNNs); rtn: rounding (the default without data)",
    )
    q.add_argument("--group-size", type=int, choices=[32, 64, 128], default=32)
    q.add_argument(
        "--int4-awq",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="activation-aware input scaling before rounding or GPTQ (needs --calibration)",
    )
    q.add_argument(
        "--int4-smooth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="W4A8: per-layer input smoothing searched on the W4A8 output error (default: on "
        "for matmuls with --calibration and --int4-activations int8, unless --int4-awq)",
    )
    q.add_argument(
        "--int4-activations",
        choices=["int8", "fp32"],
        default="int8",
        help="what int4 layers multiply the weights with: int8 (W4A8, the default: each row "
        "quantized at run time, int8 dot products) or fp32 activations (W4 x fp32)",
    )
    q.add_argument(
        "--int4-fallback",
        choices=["int8", "fp32"],
        default="int8",
        help="with --max-drop: what the layers kept off int4 run (int8: dynamic per-row)",
    )
    _add_int4_layer_options(q)


def _add_int4_layer_options(q) -> None:
    """Which layers int4 takes: the budget's order and size cap, window convs, skips."""
    q.add_argument(
        "--int4-budget-order",
        choices=["bytes", "sensitivity"],
        default="bytes",
        help="with --max-drop: the order layers leave int4, by output noise per byte they add "
        "(default) or by sensitivity alone",
    )
    q.add_argument(
        "--int4-max-size",
        type=float,
        default=None,
        metavar="R",
        help="keep the quantized layers' weights within R x their fp32 bytes: the budget's "
        "ladder moves layers to int8 (by output noise per byte) only while they fit",
    )
    q.add_argument(
        "--int4-windows",
        choices=["int8", "fp32"],
        default="fp32",
        help="the convs int4 does not take (depthwise, stem): fp32 (default), or weights "
        "stored int8, one scale per output channel (smaller, slower: a generic kernel)",
    )
    q.add_argument(
        "--int4-skip",
        metavar="LAYERS",
        help="comma-separated layers kept fp32 (names as in the compile table: matmul_3,...)",
    )
    q.add_argument(
        "--int4-embedding-group",
        type=int,
        choices=[32, 64, 128],
        help="group size of int4 embedding rows (default: --group-size)",
    )
    q.add_argument(
        "--int4-scale-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="group scales stored as fp32 (default) or fp16 (2 bytes a group)",
    )
    q.add_argument(
        "--int4-symmetric",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="zero point 8 (default); --no-int4-symmetric: a uint8 zero point per group",
    )
    q.add_argument(
        "--int4-clip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search each group's range (shrink 1.0-0.75) for the least error (default on)",
    )
    q.add_argument(
        "--int4-act-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gptq: quantize inputs by decreasing activation energy (default on)",
    )
    q.add_argument(
        "--int4-embeddings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="int4 embedding tables (gathers of constant tables >= 1 MiB; default on)",
    )


def parse_duration(text: str) -> float:
    """ "30m", "90s", "1h", "1.5h" or plain seconds to seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    unit = text[-1].lower() if text and text[-1].isalpha() else "s"
    number = text[:-1] if text and text[-1].isalpha() else text
    try:
        value = float(number) * units[unit]
    except (KeyError, ValueError) as err:
        raise InputError(f"--budget '{text}' is not a duration like 30m, 90s or 1h") from err
    if value <= 0:
        raise InputError(f"--budget '{text}' must be positive")
    return value


def cmd_tune(args: argparse.Namespace) -> int:
    from .tables import format_table
    from .tuning.tune import tune_model

    budget = parse_duration(args.budget) if args.budget else None
    opts = _compile_options(args)
    runner = None
    if args.rpc:
        from .tuning.rpc import TrackerAddress, servers_for_key, tuning_runner

        tracker, key = TrackerAddress.parse(args.rpc), _require_key(args)
        runner = tuning_runner(tracker, key)  # fails fast: unreachable tracker, unknown key
        _eprint(
            f"measuring candidates on {servers_for_key(tracker, key)} RPC server(s) "
            f"under key '{key}' at {tracker}"
        )
    summary = tune_model(
        args.model,
        Path(args.db),
        opts,
        trials=args.trials,
        budget_seconds=budget,
        runner=runner,
        progress=_eprint,
    )
    rows = [[name[:60], f"{us:.1f}"] for name, us in sorted(summary.best_us.items())]
    if rows:
        print(format_table(["task", "best us (this run)"], rows))
    print(
        f"tuning {summary.stopped}: {summary.tasks} tasks, trials {summary.trials_before} -> "
        f"{summary.trials_after} in {summary.seconds:.0f}s; records in {summary.database}"
    )
    print(f"apply with: graphopt compile {args.model} --target {args.target} --db {args.db} -o OUT")
    return 0


def _require_key(args: argparse.Namespace) -> str:
    if not args.key:
        raise InputError("--rpc needs --key KEY (the key the servers registered under)")
    return args.key


def cmd_rpc(args: argparse.Namespace) -> int:
    from .tuning.rpc import (
        REMOTE_WARNING,
        TrackerAddress,
        check_listen,
        check_reachable,
        run_foreground,
        server_args,
        tracker_args,
    )

    tracker = TrackerAddress.parse(args.tracker) if args.role == "server" else None
    if check_listen(args.host, args.port, args.allow_remote):
        _eprint(REMOTE_WARNING.format(host=args.host))
    if tracker is None:
        return run_foreground(
            tracker_args(args.host, args.port), f"RPC tracker on {args.host}:{args.port}"
        )
    check_reachable(tracker)
    return run_foreground(
        server_args(tracker, args.key, args.host, args.port),
        f"RPC server '{args.key}' registered at {tracker}",
    )


def _bench_remote(args: argparse.Namespace) -> int:
    import statistics

    from .artifact import load
    from .inputs import load_npz, random_inputs
    from .tuning.rpc import TrackerAddress, remote_latency

    art = load(args.artifact)
    inputs = (
        load_npz(args.inputs, art.inputs)
        if args.inputs
        else random_inputs(art.inputs, sizes=art.example_sizes())
    )
    tracker = TrackerAddress.parse(args.rpc)
    samples = remote_latency(
        Path(args.artifact), tracker, _require_key(args), inputs, runs=args.runs
    )
    median = statistics.median(samples)
    print(f"remote ({args.key} at {tracker}): median {median:.3f} ms over {len(samples)} runs")
    if args.json:
        _write_json(
            args.json,
            {
                "remote": {
                    "tracker": str(tracker),
                    "key": args.key,
                    "median_ms": median,
                    "samples_ms": samples,
                }
            },
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .artifact import load
    from .bundle import foreign_arch, run_bundle, run_emulated
    from .inputs import load_npz, save_npz

    art = load(args.artifact)
    device = _require_device(art, "run")
    if foreign := foreign_arch(art.manifest):  # an ARM bundle on a PC: its runner under qemu
        if foreign != "aarch64":
            raise InputError(f"{art.directory} is built for {foreign} and cannot run here")
        inputs = dict(
            zip([s.name for s in art.inputs], art.check_inputs(load_npz(args.inputs, art.inputs)))
        )
        outputs = run_emulated(art.directory, inputs)
        _eprint(f"ran the {foreign} bundle's runner under qemu (emulated)")
    elif device != "cpu" and (art.directory / "run").is_file():  # a GPU bundle: its runner
        arrays = art.check_inputs(load_npz(args.inputs, art.inputs))
        outputs = run_bundle(art.directory, dict(zip([s.name for s in art.inputs], arrays)))
    else:
        outputs = art.run(load_npz(args.inputs, art.inputs))
    save_npz(args.outputs, outputs)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items())
    print(f"wrote {args.outputs}: {shapes}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .artifact import load
    from .inputs import load_npz
    from .report import compare
    from .tables import format_table

    if args.rpc:
        return _bench_remote(args)
    if not args.vs:
        raise InputError("bench needs --vs MODEL.onnx (local comparison) or --rpc HOST:PORT")
    art = load(args.artifact)
    _require_native(art, "bench")
    inputs = load_npz(args.inputs, art.inputs) if args.inputs else None
    result = compare(
        art, args.vs, inputs=inputs, runs=args.runs, warmup=args.warmup, progress=_eprint
    )
    rows = [
        [name, f"{t.median_ms:.3f}", f"{t.p10_ms:.3f}", f"{t.p90_ms:.3f}", len(t.samples_ms)]
        for name, t in result.timings.items()
    ]
    print(format_table(["runtime", "median ms", "p10 ms", "p90 ms", "runs"], rows))
    print(
        f"ratio graphopt / onnxruntime: {result.ratio:.2f}x "
        f"(threads: {env.num_threads()}; max error {result.max_rel_error:.1e})"
    )
    if args.json:
        _write_json(args.json, result.to_json())
    return 0


def _require_device(art, command: str) -> str:
    """The artifact's device; InputError when it is an accelerator this machine lacks (the
    target's `availability` decides, e.g. cuda: a GPU present)."""
    from .target_infra import registered_targets

    device = str(art.manifest.get("target", {}).get("device", "cpu"))
    if device == "cpu":
        return device
    cls = registered_targets().get(art.manifest["target"]["name"])
    avail = cls().availability() if cls is not None else None
    if avail is None or not avail.can_run:
        why = avail.reason if avail is not None else "unknown target"
        raise InputError(
            f"{art.directory} runs on device '{device}', which this machine lacks ({why}): "
            f"`graphopt {command}` it on such a host, or run `./run model.so inputs.npz "
            "outputs.npz` there (docs/CUDA.md)"
        )
    return device


def _require_native(art, command: str) -> None:
    """Local timing of a bundle built for another CPU would time an emulator: refuse."""
    from .bundle import foreign_arch

    _require_device(art, command)
    if arch := foreign_arch(art.manifest):
        raise InputError(
            f"{art.directory} is built for {arch}: `graphopt {command}` would time an emulator; "
            f"measure it on the board with `graphopt bench DIR --rpc TRACKER --key KEY`, or run "
            f"`./run model.so in.npz out.npz --repeat 50` there (docs/ARM.md)"
        )


def _write_json(path: str, data: dict) -> None:
    from .machine import machine_info

    Path(path).write_text(json.dumps({**data, "machine": machine_info()}, indent=2) + "\n")


def cmd_report(args: argparse.Namespace) -> int:
    from .artifact import load
    from .report import compare

    art = load(args.artifact)
    _require_native(art, "report")
    result = compare(art, args.vs, eval_npz=args.eval, runs=args.runs, progress=_eprint)
    print(
        f"\n{Path(args.vs).name} -> {args.artifact} "
        f"(target {art.manifest['target']['name']}, pipeline {art.manifest['pipeline'] or '-'})"
    )
    print(result.table())
    if "precision" in art.manifest:
        from .compress.precision.report import format_report as precision_report

        print(precision_report(art.manifest["precision"]))
    if "int4" in art.manifest:  # per-layer bits and the size breakdown
        from .compress.int4.method import format_report as int4_report

        print(int4_report(art.manifest["int4"]))
    _print_pruning(art.manifest)
    if args.json:
        _write_json(args.json, result.to_json())
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from . import _tvm
    from .pass_infra import registered_passes
    from .pipeline import PRESETS
    from .tables import format_table

    if args.markdown:  # the generated table of passes/README.md
        from .pass_docs import passes_markdown

        print(passes_markdown(), end="")
        return 0
    rows = [[name, cls.summary()] for name, cls in registered_passes().items()]
    print(format_table(["pass", "summary"], rows))
    print("\npresets:")
    for name, text in PRESETS.items():
        print(f"  {name}: {text or '(no graph passes)'}")
    if args.tvm:
        print("\nTVM passes (use as tvm.<Name>):")
        print("  " + ", ".join(_tvm.relax_pass_names()))
    else:
        print(
            "\nTVM's own Relax passes are usable as tvm.<Name> (list them: graphopt passes --tvm)"
        )
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .tables import format_table
    from .target_infra import registered_targets

    rows = []
    for name, cls in registered_targets().items():
        target = cls()
        avail = target.availability()
        status = "compile+run" if avail.can_run else "compile" if avail.can_compile else "no"
        opts = ", ".join(f"{k}={v}" for k, v in target.options_dict().items())
        rows.append(
            [name, cls.summary(), status + (f" ({avail.reason})" if avail.reason else ""), opts]
        )
    print(format_table(["target", "summary", "here", "options (defaults)"], rows))
    for name, cls in registered_targets().items():
        if presets := cls.presets():
            print(f"\n{name} presets (--target-opt):")
            print(format_table(["option", "meaning"], [[k, v] for k, v in presets.items()]))
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options that decide which kernels get built: compile and tune must agree on them."""
    parser.add_argument("--target", default="x86", help="target name (see `graphopt targets`)")
    parser.add_argument(
        "--target-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="target option, e.g. mcpu=znver3 (repeatable)",
    )
    parser.add_argument(
        "-O",
        dest="opt_level",
        type=int,
        default=2,
        choices=range(4),
        help="optimization preset O0..O3 (default 2)",
    )
    parser.add_argument("--pipeline", help='graph pipeline text, e.g. "fold-constants,dce"')
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="shape for an input, e.g. input=1,3,224,224; a dim may be a range 1..512 or "
        "a named one seq:1..512 (symbolic: one build for every size; docs/SHAPES.md) "
        "(repeatable)",
    )


def _compile_options(args: argparse.Namespace, **extra):
    from .compiler import CompileOptions
    from .frontend import parse_shape_arg

    return CompileOptions(
        target=args.target,
        target_options=_key_values(args.target_opt, "--target-opt"),
        opt_level=args.opt_level,
        pipeline=args.pipeline,
        input_shapes=dict(parse_shape_arg(s) for s in args.input_shape),
        **extra,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphopt", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"graphopt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_compile, _add_tune, _add_rpc, _add_run_bench_report, _add_listings):
        add(sub)
    return p


def _add_compile(sub) -> None:
    c = sub.add_parser("compile", help="compile an ONNX model into an artifact directory")
    c.add_argument("model", help="path to model.onnx")
    c.add_argument("-o", "--output", required=True, help="artifact directory to write")
    _add_model_options(c)
    c.add_argument("--db", help="tuning database directory to apply")
    c.add_argument(
        "--print-after",
        action="append",
        default=[],
        metavar="PASS",
        help="print the IR after this pass (repeatable)",
    )
    c.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    c.add_argument(
        "--print-after-change",
        action="store_true",
        help="print the IR after every pass that changed it",
    )
    c.add_argument("--dump-dir", help="write numbered TVMScript per pass and the pipeline text")
    c.add_argument("--time-passes", action="store_true", help="print a table of pass times")
    c.add_argument(
        "--verify-each",
        action="store_true",
        help="run the model after every pass; name the first pass that breaks it",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _add_quant_options(c)
    c.set_defaults(func=cmd_compile)


def _add_tune(sub) -> None:
    tu = sub.add_parser("tune", help="auto-tune kernels into a persistent per-target database")
    tu.add_argument("model", help="path to model.onnx")
    tu.add_argument("--db", required=True, help="tuning database directory (created, resumed)")
    _add_model_options(tu)
    tu.add_argument(
        "--trials",
        type=int,
        default=1000,
        help="total trials in the database to reach (default 1000)",
    )
    tu.add_argument("--budget", help="stop after this long, e.g. 30m (records are kept)")
    tu.add_argument("--rpc", metavar="HOST:PORT", help="measure candidates on RPC servers")
    tu.add_argument("--key", help="RPC key of the servers (with --rpc)")
    tu.set_defaults(func=cmd_tune)


def _add_rpc(sub) -> None:
    rpc = sub.add_parser("rpc", help="start a TVM RPC tracker or server (stops cleanly)")
    rpc_sub = rpc.add_subparsers(dest="role", required=True, metavar="ROLE")
    rt = rpc_sub.add_parser("tracker", help="run an RPC tracker")
    rt.add_argument("--host", default="127.0.0.1")
    rt.add_argument("--port", type=int, default=9190)
    rs = rpc_sub.add_parser("server", help="run an RPC server registered at a tracker")
    rs.add_argument("--tracker", required=True, metavar="HOST:PORT")
    rs.add_argument("--key", required=True)
    rs.add_argument("--host", default="127.0.0.1")
    rs.add_argument("--port", type=int, default=9090)
    for parser in (rt, rs):
        parser.add_argument(
            "--allow-remote",
            action="store_true",
            help="allow a --host other machines can reach (TVM RPC is unauthenticated)",
        )
        parser.set_defaults(func=cmd_rpc)


def _add_run_bench_report(sub) -> None:
    r = sub.add_parser("run", help="run an artifact on inputs from an .npz file")
    r.add_argument("artifact")
    r.add_argument("--inputs", required=True, help=".npz keyed by input names")
    r.add_argument("--outputs", required=True, help=".npz to write, keyed by output names")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="median latency vs onnxruntime, interleaved in one process")
    b.add_argument("artifact")
    b.add_argument("--vs", metavar="MODEL.onnx", help="model for onnxruntime")
    b.add_argument("--rpc", metavar="HOST:PORT", help="measure on a remote device via a tracker")
    b.add_argument("--key", help="RPC key of the device (with --rpc)")
    b.add_argument("--runs", type=int, default=100)
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--inputs", help=".npz inputs (default: random, seeded)")
    b.add_argument("--json", help="also write the numbers as JSON here")
    b.set_defaults(func=cmd_bench)

    rp = sub.add_parser("report", help="size, FLOPs, latency and accuracy vs onnxruntime")
    rp.add_argument("artifact")
    rp.add_argument("--vs", required=True, metavar="MODEL.onnx")
    rp.add_argument(
        "--eval",
        help=".npz of samples (x, or named as the model's input): top-1 agreement with "
        "onnxruntime; with labels y, accuracy too",
    )
    rp.add_argument("--runs", type=int, default=100)
    rp.add_argument("--json", help="also write the numbers as JSON here")
    rp.set_defaults(func=cmd_report)


def _add_listings(sub) -> None:
    ps = sub.add_parser("passes", help="list registered passes and presets")
    ps.add_argument("--tvm", action="store_true", help="also list TVM's passes usable by name")
    ps.add_argument("--markdown", action="store_true", help="the pass reference as markdown")
    ps.set_defaults(func=cmd_passes)

    t = sub.add_parser("targets", help="list targets, their options and availability here")
    t.set_defaults(func=cmd_targets)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("bench", "report"):
        env.configure_for_benchmarks()
    try:
        return int(args.func(args))
    except GraphoptError as err:
        if env.debug():
            raise
        _eprint(f"error: {err}")
        return err.exit_code
    except PassFailure as err:
        if env.debug():
            raise
        _eprint(f"error: internal compiler error: {err}")
        _eprint("  (bisect with --pipeline / --dump-dir; GRAPHOPT_DEBUG=1 shows the traceback)")
        return 3
    except KeyboardInterrupt:
        _eprint("interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - a bug outside any pass: one line, never a trace
        if env.debug():
            raise
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        _eprint(f"error: internal error: {type(err).__name__}: {lines[-1] if lines else ''}")
        _eprint("  (please report it; GRAPHOPT_DEBUG=1 shows the traceback)")
        return 3


if __name__ == "__main__":
    sys.exit(main())
