"""int8 convs and matmuls for the GPU as one GEMM form that the `int8-dp4a` rule schedules.

Every kernel here is three unscheduled blocks (TE):

    xp   [*lead, Mp, Kp] int8   the activation operand: a matmul's rows, a conv's windows
                                (im2col computed where it is read, never stored whole),
                                uint8 shifted to int8, dynamic rows quantized
    acc  [*lead, Mp, Np] int32  sum over Kp of xp * w4, w4 [*g, Np, Kp] int8 (packed)
    out                         the op's epilogue (`graphopt.int8_ops.Epilogue`) on acc

M, N and K are padded to whole tiles (`TILE_M`, `TILE_N`, `TILE_K`): padded rows of xp read 0
or the zero point, padded weights are 0, so the padding adds nothing and the epilogue only
reads the real outputs. dp4a multiplies signed bytes only: uint8 activations are read as
x - 128 and the packer adds 128 * sum_k w to `corr` (the CPU's VNNI offset trick, mirrored).
The int32 sums are the portable kernels' sums exactly; the epilogue is the same expression,
so requantized outputs match the CPU kernels bit for bit (fp32 outputs up to FMA contraction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tvm import te, tirx

from graphopt.int8_ops import ConvSpec, Epilogue, MatmulSpec

# Tiles of the `int8-dp4a` schedule: 16 x 16 threads, 2 x 2 outputs each, 16 bytes of K a step.
THREADS_M = THREADS_N = 16
PER_THREAD = 2
TILE_M = THREADS_M * PER_THREAD
TILE_N = THREADS_N * PER_THREAD
TILE_K = 16
ACT_SHIFT = 128  # uint8 activations are read as x - 128

Divide = Callable[[object, object], object]  # (a, b) -> a / b as a TIR expression


def ieee_divide(a, b):
    """a / b rounded to nearest on the GPU whatever nvcc's --use_fast_math says (the CPU
    kernels divide in IEEE arithmetic; the quantized value must not move)."""
    return tirx.call_pure_extern("float32", "__fdiv_rn", a, b)


def plain_divide(a, b):
    return a / b


def round_up(value: int, tile: int) -> int:
    return -(-value // tile) * tile


@dataclass(frozen=True)
class GemmShape:
    m: int
    n: int
    k: int

    @property
    def padded(self) -> tuple[int, int, int]:
        return round_up(self.m, TILE_M), round_up(self.n, TILE_N), round_up(self.k, TILE_K)


def act_shift(act_dtype: str) -> int:
    return ACT_SHIFT if act_dtype == "uint8" else 0


def _as_int8(value_i32, shift: int):
    return tirx.Cast("int8", value_i32 - shift if shift else value_i32)


def _accumulate(xp: te.Tensor, w4: te.Tensor, grouped: bool) -> te.Tensor:
    """acc[*lead, m, n] = sum_k int32(xp[*lead, m, k]) * int32(w4[(g,) n, k])."""
    kp = int(xp.shape[-1])
    np_ = int(w4.shape[-2])
    k = te.reduce_axis((0, kp), name="k")

    def body(*idx):
        *lead, m, n = idx
        w = w4[lead[0], n, k] if grouped else w4[n, k]
        return te.sum(tirx.Cast("int32", xp[(*lead, m, k)]) * tirx.Cast("int32", w), axis=k)

    return te.compute((*xp.shape[:-1], np_), body, name="acc")


def matmul_gemm(spec: MatmulSpec, ep: Epilogue, zp: int, divide: Divide = ieee_divide):
    """PrimFunc(x [rows, K], w4 [Np, Kp], corr, scale, fbias [N], xs, out [rows, N]).

    xs: () (static), [rows] (per-row scales; with `fused_quant` the row scales the
    `row_scale` kernel computed from the fp32 x, which this kernel then quantizes)."""
    shape = GemmShape(spec.rows, spec.n, spec.k)
    mp, np_, kp = shape.padded
    fused = spec.fused_quant
    x = te.placeholder((spec.rows, spec.k), "float32" if fused else spec.act_dtype, name="x")
    xs = te.placeholder((spec.rows,) if spec.per_row or fused else (), "float32", name="xs")
    w4 = te.placeholder((np_, kp), "int8", name="w4")
    corr, scale, fbias = _per_channel(spec.n)
    shift = act_shift(spec.act_dtype)

    def operand(m, k):
        inside = tirx.all(m < spec.rows, k < spec.k)
        mc, kc = tirx.min(m, spec.rows - 1), tirx.min(k, spec.k - 1)
        if fused:
            q = tirx.nearbyint(divide(x[mc, kc], xs[mc]))
            q = tirx.min(tirx.max(q, tirx.const(-128.0, "float32")), tirx.const(127.0, "float32"))
            value = tirx.Cast("int32", q)
        else:
            value = tirx.Cast("int32", x[mc, kc])
        return _as_int8(tirx.if_then_else(inside, value, tirx.const(zp, "int32")), shift)

    xp = te.compute((mp, kp), operand, name="xp")
    acc = _accumulate(xp, w4, grouped=False)

    def epilogue(m, n):
        scale_m = xs[m] if (spec.per_row or fused) else xs[()]
        return ep.tir(acc[m, n], corr[n], scale[n], fbias[n], scale_m, 1)

    out = te.compute((spec.rows, spec.n), epilogue, name="out")
    return te.create_prim_func([x, w4, corr, scale, fbias, xs, out])


def conv_gemm(spec: ConvSpec, ep: Epilogue, zp: int):
    """PrimFunc(x NCHW, w4 [G, Np, Kp], corr, scale, fbias [Cout], out [B, G, Cout/G, OH*OW]):
    the conv as the matmul of its windows (pixels x taps) with the weights, per group."""
    groups, cg, og = spec.groups, spec.cin // spec.groups, spec.cout // spec.groups
    oh, ow = spec.out_hw
    pixels, taps = oh * ow, spec.kh * spec.kw
    mp, np_, kp = GemmShape(pixels, og, cg * taps).padded
    x = te.placeholder((spec.batch, spec.cin, spec.height, spec.width), spec.act_dtype, name="x")
    w4 = te.placeholder((groups, np_, kp), "int8", name="w4")
    corr, scale, fbias = _per_channel(spec.cout)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    pt, pl = spec.padding[0], spec.padding[1]

    def operand(g, b, p, k):
        ci, tap = k // taps, k % taps
        y = p // ow * sh + tap // spec.kw * dh - pt
        xx = p % ow * sw + tap % spec.kw * dw - pl
        inside = tirx.all(p < pixels, k < cg * taps, 0 <= y, y < spec.height, 0 <= xx)
        inside = tirx.all(inside, xx < spec.width)
        c = tirx.min(g * cg + ci, spec.cin - 1)
        yc = tirx.max(tirx.min(y, spec.height - 1), 0)
        xc = tirx.max(tirx.min(xx, spec.width - 1), 0)
        value = tirx.Cast("int32", x[b, c, yc, xc])
        return _as_int8(
            tirx.if_then_else(inside, value, tirx.const(zp, "int32")), act_shift(spec.act_dtype)
        )

    xp = te.compute((groups, spec.batch, mp, kp), operand, name="xp")
    acc = _accumulate(xp, w4, grouped=True)

    def epilogue(b, g, n, p):
        co = g * og + n
        return ep.tir(acc[g, b, p, n], corr[co], scale[co], fbias[co], None, 1)

    out = te.compute((spec.batch, groups, og, pixels), epilogue, name="out")
    return te.create_prim_func([x, w4, corr, scale, fbias, out])


def _per_channel(n: int):
    return (
        te.placeholder((n,), "int32", name="corr"),
        te.placeholder((n,), "float32", name="scale"),
        te.placeholder((n,), "float32", name="fbias"),
    )
