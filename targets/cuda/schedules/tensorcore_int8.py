"""Large int8 matmuls on tensor cores (wmma 16x16x16 s8 x s8 -> s32; sm_80 and newer).

Takes the GEMM form of `int8-dp4a` (`targets/cuda/int8/gemm.py`) when M, N and K all exceed
64 and no group / image axis leads it (matmuls; convs stay on dp4a), and hands it to
dlight's Matmul, whose int8 path (MatmulInt8Tensorization) stages the operands in shared
memory, multiplies 16x16x16 fragments with int32 accumulation and runs the epilogue from the
accumulators (without its software pipelining, which TVM 0.27 cannot lower for int8
fragments). A tensor-core instruction does many times the multiply-adds of a dp4a, but pads
every dimension to its tile: smaller GEMMs stay on dp4a. Importing TVM's tensor intrinsics
(about 45 s on an idle core) happens on the first matmul that qualifies.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import get_root_block

from graphopt.targets.cuda.schedules.int8_dp4a import is_int8_gemm

MIN_EXTENT = 64  # dlight's minimal_tensorize_threshold
MIN_SM = 80


def _sm(target) -> int:
    arch = str(target.attrs.get("arch", "sm_0"))
    return int(arch.split("_")[-1])


def schedule_int8_tensorcore(func: tirx.PrimFunc, target) -> s_tir.Schedule | None:
    from graphopt.targets.cuda.schedules.rules import uses_tensor_cores

    if _sm(target) < MIN_SM:
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    if not is_int8_gemm(sch, blocks):
        return None
    # dlight's own test (every axis but the first above 64) plus M: a conv's GEMM has its
    # group and image axes in front, so convs stay on dp4a (and cost no intrinsic import).
    iter_vars = sch.get(blocks[1]).iter_vars
    extents = [int(iv.dom.extent) for iv in [*iter_vars[1:], iter_vars[-3]]]
    if min(extents) <= MIN_EXTENT:
        return None
    scheduled = dlight.gpu.Matmul().apply(func, target, False)
    if scheduled is None or not uses_tensor_cores(scheduled.mod["main"]):
        return None
    _without_software_pipeline(scheduled)
    return scheduled


def _without_software_pipeline(sch: s_tir.Schedule) -> None:
    """Drop dlight's software-pipeline annotations: with int8 fragments TVM 0.27's
    InjectSoftwarePipeline fails ("fragment_info_" check in GetWmmaFragmentSize); without
    them the K loop runs unpipelined and builds."""
    seen = set()
    for block in sch.get_child_blocks(get_root_block(sch)):
        for loop in sch.get_loops(block):
            stmt = sch.get(loop)
            if stmt in seen:
                continue
            seen.add(stmt)
            for key in list(stmt.annotations.keys()):
                if str(key).startswith("software_pipeline"):
                    sch.unannotate(loop, str(key))
