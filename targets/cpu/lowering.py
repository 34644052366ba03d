"""TIR lowering for CPU targets: TVM's default pipeline, with register tiles kept on the stack.

TVM's `LowerTVMBuiltin` turns every allocation of 1024 bytes or more
(`runtime::kMaxStackAlloca`, strict `<`) into a `TVMBackendAllocWorkspace` /
`TVMBackendFreeWorkspace` pair at the allocation's scope. A conv's accumulator tile of 16
AVX-512 vectors is exactly 1024 bytes and lives inside the loop over output tiles, so every
output tile paid two calls into the runtime's workspace pool (MobileNetV2's 112x112 pointwise
conv, 4704 tiles per call: 211 -> 122 us in sequence with this pipeline; the whole model 4-8%
faster, interleaved in one process).

`keep_local_scratch_on_stack` marks small, constant-size "local" (thread-private) buffers
`disable_lower_builtin`, TVM's own annotation for allocations that stay `alloca`s; LLVM places
them in the entry block (64-byte aligned) and promotes fully unrolled tiles to registers.
Larger or "global" buffers (a depthwise conv's padded input patch) keep the workspace pool:
moving those to the stack measured no faster, and a thread's stack is small on some boards.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.tirx import compilation_pipeline
from tvm.tirx.stmt import AllocBuffer

PIPELINE = "graphopt-cpu"
# Thread-private scratch at most this size goes on the stack (a register tile is 1 KiB on
# AVX-512; the limit leaves room for wider tiles, well under any thread's stack).
STACK_SCRATCH_BYTES = 16 * 1024
_ANNOTATION = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def constant_bytes(buffer: tirx.Buffer) -> int | None:
    """Size of a buffer whose shape is all constants; None when any dimension is symbolic."""
    size = buffer.dtype.bits * buffer.dtype.lanes // 8
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        size *= int(extent)
    return size


def stays_on_stack(alloc: AllocBuffer) -> bool:
    size = constant_bytes(alloc.buffer)
    return alloc.buffer.scope() == "local" and size is not None and size <= STACK_SCRATCH_BYTES


def _mark(alloc: AllocBuffer) -> AllocBuffer:
    if _ANNOTATION in alloc.annotations or not stays_on_stack(alloc):
        return alloc
    annotations = {**alloc.annotations, _ANNOTATION: tirx.const(True, "bool")}
    return AllocBuffer(alloc.buffer, annotations, alloc.span)


@tirx.transform.prim_func_pass(opt_level=0, name="graphopt.KeepLocalScratchOnStack")
def keep_local_scratch_on_stack(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:
    return func.with_body(tvm_ffi.structural_map(func.body, [(AllocBuffer, _mark)]))


def _pipeline_factory():
    lower, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("default")

    def host_passes() -> tvm.transform.Pass:
        # Before LowerTVMBuiltin, which the default host finalization starts with.
        return tvm.transform.Sequential([keep_local_scratch_on_stack, finalize_host()])

    return lower, host_passes, finalize_device


def tir_pipeline() -> str:
    """Name of the registered TIR pipeline, for `tvm.compile(tir_pipeline=...)` and
    `tvm.tirx.build(pipeline=...)`; registers it on first use (also in builder processes)."""
    if PIPELINE not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline_factory)
    return PIPELINE
