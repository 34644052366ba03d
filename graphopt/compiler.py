"""Compile a model for a target: import, graph passes, target stages, build, artifact.

The whole flow, top to bottom:
    import_onnx -> graph passes (O0..O3 or --pipeline) -> target stages (legalize, schedule,
    lower) -> tvm.compile -> export library -> manifest.json, written atomically.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tvm

from . import __version__, _tvm
from .artifact import FORMAT, LIBRARY, MANIFEST, Artifact, AtomicDirectory, call_vm, writable_parent
from .errors import PipelineError
from .frontend import ImportedModel, import_onnx
from .inputs import random_inputs
from .instrument import VerifyEach
from .pass_infra import GraphPass, PassResult
from .pipeline import PRESETS, canonical_text, instantiate, parse_pipeline, run_passes
from .target_infra import STAGES, Target, make_target
from .tuning_db import resolve_database


@dataclass
class PassLog:
    """Collects what every pass did, for the manifest's compile report."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def after_pass(self, index, pass_: GraphPass, stage, before, result: PassResult, seconds):
        self.rows.append(
            {
                "pass": pass_.name,
                "stage": stage,
                "modified": result.modified,
                "seconds": round(seconds, 4),
                "stats": dict(result.stats),
            }
        )


@dataclass
class CompileOptions:
    """Everything `graphopt compile` takes besides the model and output directory."""

    target: str = "x86"
    target_options: Mapping[str, str] = field(default_factory=dict)
    opt_level: int = 2
    pipeline: str | None = None
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    tuning_db: Path | None = None
    instruments: Sequence[object] = ()
    verify_each: bool = False
    verify_rtol: float = 1e-4
    quantization: Any = None  # graphopt.quant.flow.QuantOptions: `--quantize int8`


def graph_pipeline_text(opts: CompileOptions) -> str:
    if opts.pipeline is not None:
        return opts.pipeline
    preset = f"O{opts.opt_level}"
    if preset not in PRESETS:
        raise PipelineError(f"unknown optimization level -O{opts.opt_level} (use 0..3)")
    return preset


def lower_for_run(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Finish lowering any intermediate module so it can be built and run (for --verify-each)."""
    names = ["tvm.LegalizeOps", "tvm.FuseTIR", *target.stages()["lower"]]
    with target.tvm_target():
        return run_passes(mod, instantiate(parse_pipeline(",".join(names))), stage="lower")


def build_and_run(mod: tvm.IRModule, target: Target, arrays: Sequence[np.ndarray]):
    """Build an intermediate module and run it once on the host (verify-each's evaluator)."""
    from tvm import relax

    ex = tvm.compile(
        lower_for_run(mod, target),
        target=target.tvm_target(),
        relax_pipeline=None,
        tir_pipeline=target.tir_pipeline(),
    )
    return call_vm(relax.VirtualMachine(ex, target.device()), arrays)


def compile_model(
    model: str | Path | onnx.ModelProto,
    output: str | Path,
    opts: CompileOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Artifact:
    """Compile `model` into the artifact directory `output`; returns the loaded artifact."""
    opts = opts or CompileOptions()
    say = progress or (lambda _msg: None)
    out = Path(output)
    writable_parent(out)
    target = make_target(opts.target, opts.target_options)
    graph_text = graph_pipeline_text(opts)
    graph_passes = instantiate(parse_pipeline(graph_text))
    records = resolve_database(opts.tuning_db, target) if opts.tuning_db else None
    stage_passes = {
        s: instantiate(parse_pipeline(",".join(names)))
        for s, names in target.stages(records).items()
    }
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    imported = import_onnx(model, opts.input_shapes, progress=say)
    seconds["import"] = time.perf_counter() - start
    mod = imported.mod
    ops_after_import = _tvm.op_counts(mod)

    log = PassLog()
    instruments = [log, *opts.instruments]
    verifier = None
    if opts.verify_each:
        arrays = list(random_inputs(imported.inputs).values())
        verifier = VerifyEach(lambda m: build_and_run(m, target, arrays), rtol=opts.verify_rtol)
        verifier.start(mod)
        instruments.append(verifier)
    for inst in instruments:
        if hasattr(inst, "write_input"):
            inst.write_input(mod, full_pipeline_text(graph_passes, stage_passes))

    # Graph passes and the quantization step see the target: `isa=auto` in lower-int8 picks
    # the target's dot instruction (calibration builds for the host itself, quant/flow.py).
    with target.tvm_target():
        say(f"passes: {canonical_text(graph_passes) or '(none)'}")
        t = time.perf_counter()
        mod = run_passes(mod, graph_passes, instruments, stage="graph")
        ops_after_passes = _tvm.op_counts(mod)
        seconds["graph_passes"] = time.perf_counter() - t
        ran = [p.name for p in graph_passes]

        from .quant.flow import imported_step, quantize_step

        t = time.perf_counter()
        if opts.quantization is not None:
            quant = quantize_step(
                mod, imported.inputs, opts.quantization, opts.target, opts.target_options, say
            )
        else:  # an already-quantized model: its own int8 weights, integer kernels
            quant = imported_step(mod)
        if quant is not None:
            mod = run_passes(mod, quant.passes, instruments, stage="quantize", already_ran=ran)
            ran += [p.name for p in quant.passes]
            quant.manifest["pipeline"] = canonical_text(quant.passes)
            if verifier is not None:  # later passes are checked against the quantized graph
                verifier.start(mod)
            seconds["quantize"] = time.perf_counter() - t

    flops = 0
    with target.tvm_target():
        for stage in STAGES:
            t = time.perf_counter()
            say(f"target {target.name}: {stage} ({len(stage_passes[stage])} passes)")
            mod = run_passes(mod, stage_passes[stage], instruments, stage=stage, already_ran=ran)
            ran += [p.name for p in stage_passes[stage]]
            if stage == "legalize":
                flops = _tvm.estimate_flops(mod)
                kernels = sum(1 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
                kernel_calls = _tvm.op_counts(mod).get("relax.call_tir", 0)
            seconds[stage] = time.perf_counter() - t

    say("build: generating machine code")
    t = time.perf_counter()
    executable = tvm.compile(
        mod, target=target.tvm_target(), relax_pipeline=None, tir_pipeline=target.tir_pipeline()
    )
    seconds["build"] = time.perf_counter() - t
    if quant is not None and target.availability().can_run:
        from tvm import relax

        vm = relax.VirtualMachine(executable, target.device())
        quant.check_artifact(lambda arrays: call_vm(vm, arrays))

    manifest = _manifest(imported, model, target, records, graph_passes, stage_passes)
    if quant is not None:
        manifest["quantization"] = quant.manifest
        manifest["full_pipeline"] = full_pipeline_text([*graph_passes, *quant.passes], stage_passes)
        if quant.workdir is not None:
            quant.workdir.cleanup()
    manifest["report"] = {
        "flops": flops,
        "kernels": kernels,  # distinct TIR kernels (identical ones are shared)
        "kernel_calls": kernel_calls,  # call_tir launches in the graph
        "onnx_nodes": imported.onnx_nodes,
        "ops_after_import": ops_after_import,
        "ops_after_passes": ops_after_passes,
        "passes": log.rows,
        "seconds": {k: round(v, 3) for k, v in {**imported.seconds, **seconds}.items()},
    }
    with AtomicDirectory(out) as tmp:
        target.export(executable, tmp / LIBRARY)
        target.export_bundle(tmp, manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"wrote {out}/ ({(out / LIBRARY).stat().st_size / 1024:.0f} KiB library)")
    return Artifact(out)


def full_pipeline_text(graph: Sequence[GraphPass], stages: Mapping[str, Sequence[GraphPass]]):
    return canonical_text([*graph, *(p for s in STAGES for p in stages[s])])


def _manifest(
    imported: ImportedModel,
    model: Any,
    target: Target,
    records: Path | None,
    graph_passes: Sequence[GraphPass],
    stage_passes: Mapping[str, Sequence[GraphPass]],
) -> dict[str, Any]:
    import tvm_ffi

    return {
        "format": FORMAT,
        "library": LIBRARY,
        "inputs": [s.to_json() for s in imported.inputs],
        "outputs": [s.to_json() for s in imported.outputs],
        "target": {
            "name": target.name,
            "options": target.options_dict(),
            "tvm": str(target.tvm_target()),
        },
        "pipeline": canonical_text(graph_passes),
        "stages": {s: canonical_text(stage_passes[s]) for s in STAGES},
        "full_pipeline": full_pipeline_text(graph_passes, stage_passes),
        "tuning_db": str(records) if records else None,
        "source": {
            "path": str(model) if not isinstance(model, onnx.ModelProto) else None,
            "sha256": imported.sha256,
        },
        "versions": {
            "graphopt": __version__,
            "tvm": tvm.__version__,
            "tvm_ffi": tvm_ffi.__version__,
            "onnx": onnx.__version__,
            "python": platform.python_version(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
