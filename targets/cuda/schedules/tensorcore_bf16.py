"""bf16 matmuls and convs on tensor cores (wmma 16x16x16, fp32 accumulation; sm_80+).

dlight's MatmulTensorization is the schedule (operands staged in shared memory with double
buffering, 4x2 fragments per warp, epilogue inlined): it is fp16-only only through the names
of the wmma intrinsics it asks `get_wmma_intrin_group` for, and TVM registers no bf16 ones.
This rule registers bf16 load and multiply-accumulate intrinsics, built with TVM's own
generators (TVM's CUDA codegen emits `wmma::fragment<..., nv_bfloat16, ...>` for them), and
runs dlight's schedule with the bf16 names. Same guard as dlight's fp16 path: bf16 inputs, fp32
output and every non-batch dimension above 64 (smaller ones pad more than they gain and go to
dlight's SIMT matmul).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu import matmul as dlight_matmul

MIN_EXTENT = 64  # dlight's minimal_tensorize_threshold
_REGISTERED: list[bool] = []  # non-empty once the bf16 intrinsics are registered
_BF16_INTRINSICS = {
    "load_a": "wmma_load_16x16x16_bf16_a_shared_dyn",
    "load_b": "wmma_load_16x16x16_bf16_b_trans_shared_dyn",
    "compute": "wmma_sync_16x16x16_bf16bf16f32_trans",
}


def _register_intrinsics() -> None:
    """The three bf16 intrinsics (fill and store are fp32, TVM has them); importing TVM's CUDA
    intrinsics is slow (about 45 s), so it happens only when a bf16 matmul is scheduled."""
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import cuda

    made = {
        "load_a": cuda.get_wmma_load_intrin(16, 16, 16, "bfloat16", "shared.dyn", False, False),
        "load_b": cuda.get_wmma_load_intrin(16, 16, 16, "bfloat16", "shared.dyn", True, True),
        "compute": cuda.get_wmma_sync_intrin(16, 16, 16, "bfloat16", "float32", True),
    }
    for key, (desc, impl) in made.items():
        TensorIntrin.register(_BF16_INTRINSICS[key], desc, impl, override=True)
    _REGISTERED.append(True)


@contextlib.contextmanager
def _bf16_intrinsic_names() -> Iterator[None]:
    """dlight's schedule asks for its intrinsics' names at apply time: answer with bf16's."""
    from tvm.s_tir.tensor_intrin import cuda

    fp16_group = cuda.get_wmma_intrin_group

    def group(load_scope, store_scope, in_dtype, out_dtype, trans_b):
        names = fp16_group(load_scope, store_scope, "float16", out_dtype, trans_b)
        return {**names, **_BF16_INTRINSICS}

    cuda.get_wmma_intrin_group = group
    try:
        yield
    finally:
        cuda.get_wmma_intrin_group = fp16_group


def fits_tensor_cores(func: tirx.PrimFunc) -> bool:
    """A matmul-like kernel (dlight's normal form C[S, I, J] += A[S, I, K] * B[S, J, K]) with
    bf16 inputs, an fp32 result and I, J, K all above MIN_EXTENT."""
    sch = s_tir.Schedule(func)
    blocks = dlight_matmul.get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if not blocks or dlight_matmul.get_index_map(sch.get(blocks[0])) is None:
        return False
    main = blocks[0]
    dtypes = tuple(str(d) for d in dlight_matmul.get_in_out_dtypes(sch.get(main)))
    if dtypes != ("bfloat16", "float32"):
        return False
    for i, kind in enumerate(("read", "read", "write")):
        sch.reindex(main, (kind, 0 if kind == "write" else i))
    index_map = dlight_matmul.get_index_map(sch.get(main))
    if index_map is None:
        return False
    sch.transform_block_layout(main, index_map[0])
    extents = [iv.dom.extent for iv in sch.get(main).iter_vars[1:]]
    return all(not isinstance(e, tirx.IntImm) or int(e) > MIN_EXTENT for e in extents)


def schedule_matmul_bf16(func: tirx.PrimFunc, target) -> s_tir.Schedule | None:
    """dlight's tensor-core matmul schedule on bf16 wmma intrinsics, or None."""
    arch = str(target.attrs.get("arch", ""))
    if dlight_matmul.check_sm_version(arch) < 80 or not fits_tensor_cores(func):
        return None
    if not _REGISTERED:
        _register_intrinsics()
    with _bf16_intrinsic_names():
        return dlight_matmul.MatmulTensorization().apply(func, target, False)
