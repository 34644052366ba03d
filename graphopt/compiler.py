"""Compile a model for a target: import, graph passes, target stages, build, artifact.

The whole flow, top to bottom:
    import_onnx -> graph passes (O0..O3 or --pipeline), compression methods before the first
    layer-hiding pass -> target stages (legalize, schedule, lower) -> tvm.compile (graphopt.build)
    -> export library -> manifest.json, written atomically.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import tvm

from . import __version__, _tvm
from .artifact import FORMAT, LIBRARY, MANIFEST, Artifact, AtomicDirectory, writable_parent
from .build import evaluate, run_stages, stage_passes, tvm_compile, vm_runner
from .compress import CompressionContext, CompressionPlan, default_methods, split_for_compression
from .errors import PipelineError, SymbolicShapeError
from .frontend import ImportedModel, import_onnx
from .frontend.dims import SymDim
from .inputs import random_inputs
from .instrument import VerifyEach
from .pass_infra import GraphPass, PassResult, make_pass
from .pipeline import PRESETS, canonical_text, instantiate, parse_pipeline, run_passes
from .target_infra import STAGES, Target, make_target
from .tuning.database import resolve_database


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
    # Compression methods in order (graphopt.compress): `--quantize int8` adds compress.int8's
    # Int8. None given: the default methods (an already-quantized model's own int8 weights).
    compression: Sequence[Any] = ()


def graph_pipeline_text(opts: CompileOptions) -> str:
    if opts.pipeline is not None:
        return opts.pipeline
    preset = f"O{opts.opt_level}"
    if preset not in PRESETS:
        raise PipelineError(f"unknown optimization level -O{opts.opt_level} (use 0..3)")
    return preset


@dataclass
class _Compilation:
    """One compile's state as it moves through the steps of `compile_model`."""

    opts: CompileOptions
    target: Target
    say: Callable[[str], None]
    graph_passes: list[GraphPass]
    stages: dict[str, list[GraphPass]]
    records: Path | None
    instruments: list[object]
    log: PassLog = field(default_factory=PassLog)
    ran: list[str] = field(default_factory=list)
    plans: list[CompressionPlan] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    verifier: VerifyEach | None = None
    # The graph before compression, and the pass-log and ran-list lengths then (for rebuilds).
    pre_compression: tuple[tvm.IRModule, int, int] | None = None
    # Symbolic dims at the sizes the report counts FLOPs at (the example inputs').
    example_sizes: dict[str, int] = field(default_factory=dict)

    def timed(self, key: str, start: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


def compile_model(
    model: str | Path | onnx.ModelProto,
    output: str | Path,
    opts: CompileOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Artifact:
    """Compile `model` into the artifact directory `output`; returns the loaded artifact.

    import -> graph passes, with compression before the first layer-hiding pass -> target
    stages -> tvm.compile -> artifact check -> atomic write.
    """
    opts = opts or CompileOptions()
    out = Path(output)
    writable_parent(out)
    job = _start(opts, progress or (lambda _msg: None))
    start = time.perf_counter()
    imported = import_onnx(model, opts.input_shapes, progress=job.say)
    job.timed("import", start)
    _check_symbolic(imported, job)
    mod = _graph_and_compression(imported, job)
    executable = _build_within_budget(mod, job)
    for plan in job.plans:
        plan.cleanup()
    manifest = _manifest(imported, model, job)
    with AtomicDirectory(out) as tmp:
        job.target.export(executable, tmp / LIBRARY)
        job.target.export_bundle(tmp, manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    job.say(f"wrote {out}/ ({(out / LIBRARY).stat().st_size / 1024:.0f} KiB library)")
    return Artifact(out)


def _start(opts: CompileOptions, say: Callable[[str], None]) -> _Compilation:
    """Resolve the target, the graph pipeline, the tuning records and the stage passes."""
    target = make_target(opts.target, opts.target_options)
    graph_passes = instantiate(parse_pipeline(graph_pipeline_text(opts)))
    records = resolve_database(opts.tuning_db, target) if opts.tuning_db else None
    stages = stage_passes(target, records)
    job = _Compilation(opts, target, say, graph_passes, stages, records, [])
    job.instruments = [job.log, *opts.instruments]
    return job


def _check_symbolic(imported: ImportedModel, job: _Compilation) -> None:
    """Symbolic dims build for x86 and ARM, with the compression methods whose kernels take
    symbolic sizes (`symbolic_shapes`: int8, int4, pruning, 16-bit precision); anything else
    is one line, before any work (CUDA's symbolic schedules are not verified on a GPU)."""
    if not imported.dims:
        return
    job.example_sizes = {n: SymDim(n, lo, hi).example for n, (lo, hi) in imported.dims.items()}
    names = ", ".join(f"{n}:{lo}..{hi}" for n, (lo, hi) in imported.dims.items())
    example = imported.example_inputs()[0]
    pin = f"--input-shape {example.name}={','.join(str(d) for d in example.shape)}"
    static_only = [m.name for m in job.opts.compression if not getattr(m, "symbolic_shapes", 0)]
    if static_only:
        raise SymbolicShapeError(
            f"{', '.join(static_only)} needs static input shapes, got symbolic dims {names}: "
            f"pin them ({pin})"
        )
    if job.target.name not in ("x86", "arm"):
        raise SymbolicShapeError(
            f"symbolic dims ({names}) build for the x86 and arm targets, not {job.target.name}: "
            f"pin them ({pin})"
        )


def _graph_and_compression(imported: ImportedModel, job: _Compilation) -> tvm.IRModule:
    """Graph passes with the compression methods run between the passes that keep layers
    visible and those that fuse them (compress/__init__.py: split_for_compression)."""
    mod = imported.mod
    job.report["ops_after_import"] = _tvm.op_counts(mod)
    if job.opts.verify_each:
        arrays = list(random_inputs(imported.example_inputs()).values())
        job.verifier = VerifyEach(lambda m: evaluate(m, arrays), rtol=job.opts.verify_rtol)
        job.verifier.start(mod)
        job.instruments.append(job.verifier)
    for inst in job.instruments:
        if hasattr(inst, "write_input"):
            inst.write_input(mod, full_pipeline_text(job.graph_passes, job.stages))
    before, _after = split_for_compression(job.graph_passes)
    job.say(f"passes: {canonical_text(job.graph_passes) or '(none)'}")
    with job.target.tvm_target():
        mod = _run_graph_passes(mod, before, job)
        job.pre_compression = (mod, len(job.log.rows), len(job.ran))
        return _plan_compression(mod, imported, job)


def _run_graph_passes(mod: tvm.IRModule, passes: list[GraphPass], job: _Compilation, stage="graph"):
    start = time.perf_counter()
    mod = run_passes(mod, passes, job.instruments, stage=stage, already_ran=job.ran)
    job.ran += [p.name for p in passes]
    job.timed("graph_passes" if stage == "graph" else stage, start)
    return mod


def _plan_compression(
    mod: tvm.IRModule, imported: ImportedModel, job: _Compilation
) -> tvm.IRModule:
    """Every selected compression method in turn: the graph passes it requires, its plan on
    the current graph, its passes."""
    methods = list(job.opts.compression) or default_methods()
    ctx = CompressionContext(imported.ranged_inputs(), job.target, job.say, job.example_sizes)
    for method in methods:
        start = time.perf_counter()
        prefix = [make_pass(name) for name in method.requires if name not in job.ran]
        mod = _run_graph_passes(mod, prefix, job)
        plan = method.plan(mod, ctx)
        job.timed("compress", start)
        if plan is None:
            continue
        plan.prefix = prefix
        job.plans.append(plan)
        mod = _apply_plan(mod, plan, job)
    return mod


def _apply_plan(mod: tvm.IRModule, plan: CompressionPlan, job: _Compilation) -> tvm.IRModule:
    first = len(job.log.rows)
    mod = _run_graph_passes(mod, plan.passes, job, stage="compress")
    plan.manifest["pipeline"] = canonical_text(plan.passes)
    # what the method's passes did (a report can say how many layers got integer kernels)
    plan.manifest["pass_stats"] = {row["pass"]: row["stats"] for row in job.log.rows[first:]}
    if job.verifier is not None:  # later passes are checked against the compressed graph
        job.verifier.start(mod)
    return mod


def _recompress(job: _Compilation) -> tvm.IRModule:
    """The graph again from before compression, with the (tightened) plans."""
    mod, rows, ran = job.pre_compression
    del job.log.rows[rows:], job.ran[ran:]
    with job.target.tvm_target():
        for plan in job.plans:
            mod = _run_graph_passes(mod, plan.prefix, job)
            mod = _apply_plan(mod, plan, job)
    return mod


def _after_compression(mod: tvm.IRModule, job: _Compilation) -> tvm.IRModule:
    """The graph passes after compression (fusion), then the target's stages."""
    _before, after = split_for_compression(job.graph_passes)
    with job.target.tvm_target():
        mod = _run_graph_passes(mod, after, job)
    job.report["ops_after_passes"] = _tvm.op_counts(mod)
    return _target_stages(mod, job)


def _target_stages(mod: tvm.IRModule, job: _Compilation) -> tvm.IRModule:
    """The target's legalize, schedule and lower stages; the compute report after legalize."""
    for stage in STAGES:
        start = time.perf_counter()
        mod = run_stages(
            mod,
            job.target,
            [stage],
            passes=job.stages,
            instruments=job.instruments,
            already_ran=job.ran,
            progress=job.say,
        )
        if stage == "legalize":
            job.report["flops"] = _tvm.estimate_flops(mod, job.example_sizes)
            # distinct TIR kernels (identical ones are shared) and call_tir launches
            job.report["kernels"] = sum(
                1 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
            )
            job.report["kernel_calls"] = _tvm.op_counts(mod).get("relax.call_tir", 0)
        job.timed(stage, start)
    return mod


def _build_within_budget(mod: tvm.IRModule, job: _Compilation) -> Any:
    """Finish and build; where this machine runs the target, each compression plan scores
    the executable itself, and while one misses its accuracy budget it keeps one more layer
    uncompressed and the model is rebuilt (the budget holds for what ships, not a simulation)."""
    executable = _build(_after_compression(mod, job), job)
    while job.plans and job.target.availability().can_run:
        run = vm_runner(executable, job.target)
        missed = [i for i, plan in enumerate(job.plans) if not plan.check_artifact(run)]
        if not missed:
            break
        previous = list(job.plans)
        for i in missed:
            plan = job.plans[i]
            accuracy = plan.manifest["accuracy"]
            tighter = plan.tighten() if plan.tighten is not None else None
            if tighter is None:
                job.say(
                    f"warning: {plan.method}: the artifact scores {accuracy['artifact']:.2f}, "
                    f"below the budget {plan.budget:.2f}, with nothing left to keep"
                )
                return executable
            job.say(
                f"{plan.method}: the artifact scores {accuracy['artifact']:.2f}, below the "
                f"budget {plan.budget:.2f}: keeping one more layer uncompressed, rebuilding"
            )
            job.plans[i] = tighter
        rebuilt = _rebuild(job, previous)
        if rebuilt is None:
            return executable
        executable = rebuilt
    return executable


def _rebuild(job: _Compilation, previous: list[CompressionPlan]) -> Any:
    """The model again with the tightened plans; None (and the previous plans and state back,
    with a warning) when that build fails, so a budget miss never turns into a failed compile."""
    saved = (list(job.log.rows), list(job.ran), dict(job.report))
    try:
        return _build(_after_compression(_recompress(job), job), job)
    except Exception as err:  # noqa: BLE001 - any failure of the rebuild: keep the last build
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        job.log.rows[:], job.ran[:] = saved[0], saved[1]
        job.report.clear()
        job.report.update(saved[2])
        job.plans[:] = previous
        job.say(
            "warning: rebuilding with more layers uncompressed failed "
            f"({lines[-1] if lines else type(err).__name__}); keeping the previous build, "
            "which misses the accuracy budget"
        )
        return None


def _build(mod: tvm.IRModule, job: _Compilation) -> Any:
    """tvm.compile with the target's TIR pipeline."""
    job.say("build: generating machine code")
    start = time.perf_counter()
    executable = tvm_compile(mod, job.target)
    job.timed("build", start)
    return executable


def full_pipeline_text(graph: Sequence[GraphPass], stages: Mapping[str, Sequence[GraphPass]]):
    return canonical_text([*graph, *(p for s in STAGES for p in stages[s])])


def _manifest(imported: ImportedModel, model: Any, job: _Compilation) -> dict[str, Any]:
    import tvm_ffi

    target, stages = job.target, job.stages
    compressed = [p for plan in job.plans for p in plan.passes]
    before, after = split_for_compression(job.graph_passes)  # the order they ran in
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "library": LIBRARY,
        "inputs": [s.to_json() for s in imported.inputs],
        "dims": {name: {"min": lo, "max": hi} for name, (lo, hi) in imported.dims.items()},
        "outputs": [s.to_json() for s in imported.outputs],
        "target": {
            "name": target.name,
            "options": target.options_dict(),
            "tvm": str(target.tvm_target()),
            "device": target.device_kind(),
        },
        "pipeline": canonical_text(job.graph_passes),
        "stages": {s: canonical_text(stages[s]) for s in STAGES},
        "full_pipeline": full_pipeline_text([*before, *compressed, *after], stages),
        "tuning_db": str(job.records) if job.records else None,
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
    for plan in job.plans:
        manifest[plan.method] = plan.manifest
    seconds = {**imported.seconds, **job.seconds}
    manifest["report"] = {
        "flops": job.report.get("flops", 0),
        "kernels": job.report.get("kernels", 0),
        "kernel_calls": job.report.get("kernel_calls", 0),
        "onnx_nodes": imported.onnx_nodes,
        "ops_after_import": job.report["ops_after_import"],
        "ops_after_passes": job.report["ops_after_passes"],
        "passes": job.log.rows,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return manifest
