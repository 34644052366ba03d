"""int8 convs and matmuls with `dp4a` (4 int8 products summed into int32 per instruction).

Takes the GEMM form of `targets/cuda/int8/gemm.py`: an int8 operand block `xp`, the int32
reduction `acc` over K against int8 weights, one epilogue block. A thread block computes a
32 x 32 output tile with 16 x 16 threads of 2 x 2 accumulators in registers; per 16-byte step
of K the threads stage xp's tile (its im2col / quantization computed on the way) and the
weights' tile in shared memory, then each thread runs dp4a on 4-byte words of both. The
epilogue (requantize or dequantize) runs per thread on its registers and writes only real
outputs (the kernel's M, N and K are padded to whole tiles).

TVM ships a dp4a tensor intrinsic, but importing `tvm.s_tir.tensor_intrin` loads every CUDA
intrinsic (about 45 s); the same 4-lane description and `__dp4a` call are registered here
under graphopt's name.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.script import tirx as T

from graphopt.targets.cuda.int8.gemm import PER_THREAD, THREADS_M, THREADS_N, TILE_K

DP4A = "graphopt_dp4a_s8s8s32"
_REGISTERED: list[bool] = []


def _register() -> None:
    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
        b: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
        c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            for i in range(4):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    c[0] = c[0] + T.Cast("int32", a[vi]) * T.Cast("int32", b[vi])

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
        b: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
        c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            c[0] = T.call_pure_extern(
                "int32", "__dp4a", a.vload([0], "int8x4"), b.vload([0], "int8x4"), c[0]
            )

    s_tir.TensorIntrin.register(DP4A, desc, impl, override=True)
    _REGISTERED.append(True)


def is_int8_gemm(sch: s_tir.Schedule, blocks) -> bool:
    """xp (int8, spatial), acc (int32 reduction reading xp and an int8 parameter along its
    last axis, K a whole number of tiles), one epilogue."""
    if len(blocks) != 3:
        return False
    xp, acc, _ = (sch.get(b) for b in blocks)
    if len(xp.writes) != 1 or xp.writes[0].source.dtype != "int8":
        return False
    kinds = [iv.iter_type for iv in acc.iter_vars]
    if kinds[-1] != tirx.IterVar.CommReduce or kinds.count(tirx.IterVar.CommReduce) != 1:
        return False
    reads = [r.source for r in acc.reads]
    if acc.writes[0].source.dtype != "int32" or len(reads) != 2:
        return False
    if not reads[0].same_as(xp.writes[0].source) or reads[1].dtype != "int8":
        return False
    extents = [int(iv.dom.extent) for iv in acc.iter_vars]
    m, n, k = extents[-3:]
    return (
        m % (THREADS_M * PER_THREAD) == 0
        and n % (THREADS_N * PER_THREAD) == 0
        and (k % TILE_K == 0)
    )


def _cooperative(sch: s_tir.Schedule, block, at) -> None:
    """Stage `block`'s tile in shared memory under loop `at`, loaded by all the threads."""
    sch.compute_at(block, at, preserve_unit_loops=True)
    loops = sch.get_loops(block)
    depth = [sch.get(lp).same_as(sch.get(at)) for lp in loops].index(True) + 1
    loops = loops[depth:]
    fused = sch.fuse(*loops)
    _, ty, tx = sch.split(fused, [None, THREADS_M, THREADS_N])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def schedule_dp4a(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    if not is_int8_gemm(sch, blocks):
        return None
    if not _REGISTERED:
        _register()
    xp, acc, epilogue = blocks
    *lead, m, n, k = sch.get_loops(acc)
    mo, mt, mi = sch.split(m, [None, THREADS_M, PER_THREAD])
    no, nt, ni = sch.split(n, [None, THREADS_N, PER_THREAD])
    ko, kk, k4 = sch.split(k, [None, TILE_K // 4, 4])
    sch.reorder(*lead, mo, no, mt, nt, ko, kk, mi, ni, k4)
    if lead:
        sch.bind(sch.fuse(*lead), "blockIdx.z")
    sch.bind(mo, "blockIdx.y")
    sch.bind(no, "blockIdx.x")
    sch.bind(mt, "threadIdx.y")
    sch.bind(nt, "threadIdx.x")
    sch.set_scope(xp, 0, "shared")
    weights = sch.cache_read(acc, 1, "shared")
    _cooperative(sch, xp, ko)
    _cooperative(sch, weights, ko)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(epilogue, nt)
    sch.decompose_reduction(acc, ko)
    sch.tensorize(k4, DP4A)
    return sch
