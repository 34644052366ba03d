"""The bf16 attention kernel for x86 CPUs with AVX512_BF16: softmax(Q K^T * s + mask) V with
both matmuls on `vdpbf16ps`, one kernel per attention (`precision-attention` emits it).

The op (per batch b and head h; q, k, v [B, S, H*D] fp32 with the heads merged, as exporters
leave them before their head reshapes):

    scores = r(q_h * q_scale) @ r(k_h * k_scale)^T      bf16 operands, fp32 sums
    t      = scores * score_scale + mask                fp32
    e      = exp(t - max t),  z = sum e                 fp32, per query row
    out_h  = (r(e) @ r(v_h)) / z                        bf16 operands, fp32 sums

r rounds to bf16 (nearest even), the sums run in the instruction's pair order. Dividing the
output rows by z instead of the probabilities saves a pass over every row; r(e / z) and
r(e) / z differ only in where the one rounding falls. A row of -inf scores (NaN in the graph's
softmax) gives NaN, or zeros under the graph's NaN guard (`where(isnan(p), 0, p)`).

The first step packs K and V per (b, h) into the instruction's words: K as [key panels of 16,
D/2, 16] (a score vector is 16 keys), V as [D/16 panels, keys/2, 16] (an output vector is 16
of the head dim); padded keys are zero words. Parallel workers then run tasks of MR query rows
of one head: their Q words, the scores tile (MR rows x 2 key panels of accumulators at a time)
into a per-worker row buffer, the softmax over each row in SIMD lanes (exp as TVM's
`fast_exp`: range reduction and a degree-7 polynomial, ~1e-7 relative) writing r(e) as bf16
bits, and the output tile (MR rows x D/16 panels). Nothing of size heads x keys x keys is
ever stored.

Limits (the pass leaves other attentions fp32): static shapes, D a multiple of 16, a NaN
guard value of 0 or none. `reference_attention16` is the numpy model (np.exp for the exp:
equal up to the exp's and the row sum's rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from graphopt.targets.cpu.precision import dpbf16 as D

PANEL = 16
MR = 8  # query rows per task: 8 x 2 score accumulators, 8 x (D/16) output accumulators
SCORE_PANELS = 2  # key panels per score register tile
# Parallel workers, each a run of tasks with its own row buffers (a buffer declared per task
# is a workspace allocation per task).
WORKERS = 32
# op_pattern 8 (opaque): FuseOps leaves the kernel alone (its body is loops, not blocks).
_ATTRS = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}
KERNEL_ATTR = "graphopt.attention16"  # its spec, as text (the target stage sets it aside)
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
          5.0000001201e-1)  # fmt: skip


@dataclass(frozen=True)
class AttentionSpec:
    """One attention: q [batch, seq_q, heads*head_dim], k, v [batch, seq_k, heads*head_dim],
    mask None or 4-D broadcastable to [batch, heads, seq_q, seq_k] (additive)."""

    batch: int
    seq_q: int
    seq_k: int
    heads: int
    head_dim: int
    q_scale: float = 1.0
    k_scale: float = 1.0
    score_scale: float = 1.0
    mask_shape: tuple[int, ...] | None = None  # rank 1 to 4, aligned to the trailing dims
    nan_value: float | None = None  # the NaN guard's replacement (None: no guard)

    def text(self) -> str:
        return repr(self)

    @property
    def key_panels(self) -> int:  # padded to whole score tiles
        p = -(-self.seq_k // PANEL)
        return -(-p // SCORE_PANELS) * SCORE_PANELS

    @property
    def supported(self) -> bool:
        guard_ok = self.nan_value in (None, 0.0)  # a row of -inf: NaN or zeros
        return self.head_dim % PANEL == 0 and self.seq_k > 0 and self.seq_q > 0 and guard_ok


def fast_exp(x):
    """TIR exp(x) as TVM's `topi.fast_exp` (vectorizes; relative error ~1e-7)."""
    xc = T.max(T.min(x, T.float32(88.3762626647950)), T.float32(-88.3762626647949))
    n = T.floor(xc * T.float32(1.44269504088896341) + T.float32(0.5))
    f = xc - n * T.float32(0.6931471805599453)
    y = T.float32(_EXP_P[0])
    for c in _EXP_P[1:]:
        y = y * f + T.float32(c)
    y = y * f * f + f + T.float32(1.0)
    ef = T.reinterpret("float32", T.shift_left(T.Cast("int32", n + T.float32(127.0)), 23))
    return T.max(ef * y, x)


def _pair_word(lo, hi):
    """Two fp32 values -> one int32 word of their bf16 bits (lo in the low half)."""
    return T.reinterpret(
        "int32", T.bitwise_or(D._bf16_word(lo), T.shift_left(D._bf16_word(hi), T.uint32(16)))
    )


def _pack_macro(spec: AttentionSpec):
    """TIR macro: K and V of every (batch, head) -> the instruction's words (zero past keys)."""
    h_count, dim, sk = spec.heads, spec.head_dim, spec.seq_k
    kpan, half, vpan = spec.key_panels, spec.head_dim // 2, spec.head_dim // PANEL
    pairs = kpan * PANEL // 2
    ks = T.float32(spec.k_scale)

    @T.macro
    def pack(k, v, kp, vp):
        for bh in T.parallel(spec.batch * h_count):
            b = T.meta_var(bh // h_count)
            col = T.meta_var(bh % h_count * dim)
            for jp, t in T.grid(kpan, half):
                for lane in T.vectorized(PANEL):
                    j = T.meta_var(T.min(jp * PANEL + lane, sk - 1))
                    word = T.meta_var(
                        _pair_word(k[b, j, col + 2 * t] * ks, k[b, j, col + 2 * t + 1] * ks)
                    )
                    kp[bh, jp, t, lane] = T.Select(jp * PANEL + lane < sk, word, 0)
            for dp, u in T.grid(vpan, pairs):
                for lane in T.vectorized(PANEL):
                    d = T.meta_var(col + dp * PANEL + lane)
                    lo = T.meta_var(
                        T.Select(2 * u < sk, v[b, T.min(2 * u, sk - 1), d], T.float32(0))
                    )
                    hi = T.meta_var(
                        T.Select(2 * u + 1 < sk, v[b, T.min(2 * u + 1, sk - 1), d], T.float32(0))
                    )
                    vp[bh, dp, u, lane] = _pair_word(lo, hi)

    return pack


def _mask_at(spec: AttentionSpec, mask, b, h, i, j):
    """The additive mask's value for (b, h, i, j), broadcast over its size-1 dims."""
    if spec.mask_shape is None:
        return T.float32(0)
    dims = (b, h, i, j)[4 - len(spec.mask_shape) :]  # a mask of lower rank: the trailing dims
    return mask[tuple(0 if n == 1 else x for n, x in zip(spec.mask_shape, dims))]


def _tile_macro(nr: int, steps: int):
    """TIR macro: acc [MR * nr] = the MR rows' words a [MR, steps] against nr panels of b
    [.., panels, steps, 16] from panel g * nr: per step one broadcast word a row, one
    `vdpbf16ps` per row and panel."""

    @T.macro
    def tile(acc, a, b, bh, g):
        for i in T.unroll(MR * nr):
            acc[i] = T.broadcast(T.float32(0), PANEL)
        for t in range(steps):
            for r in T.unroll(MR):
                av = T.meta_var(T.broadcast(a[r, t], PANEL))
                for j in T.unroll(nr):
                    bv = T.meta_var(b[bh, g * nr + j, t, T.ramp(0, 1, PANEL)])
                    acc[r * nr + j] = D._dp(acc[r * nr + j], av, bv)

    return tile


def _folds_mask(spec: AttentionSpec) -> bool:
    """Whether the score tiles hold no padded keys, so their stores can add the scale and
    mask and keep the row maxima (one pass over the rows fewer)."""
    return spec.key_panels * PANEL == spec.seq_k


def _scores_macro(spec: AttentionSpec):
    """TIR macro: the MR rows' scores into sc [MR, key panels * 16]: raw sums, or (keys a
    whole number of tiles) scaled and masked, with each row's maxima in SIMD lanes top16."""
    ss = T.float32(spec.score_scale)
    fold = _folds_mask(spec)
    tile = _tile_macro(SCORE_PANELS, spec.head_dim // 2)

    @T.macro
    def scores(qw, kp, sc, top16, mask, bh, b, h, row0):
        acc = T.decl_buffer((MR * SCORE_PANELS,), "float32x16", scope="local")
        for r in T.unroll(MR):
            top16[r] = T.broadcast(T.float32(-np.inf), PANEL)
        for g in range(spec.key_panels // SCORE_PANELS):
            tile(acc, qw, kp, bh, g)
            for r in T.unroll(MR):
                for j in T.unroll(SCORE_PANELS):
                    cols = T.meta_var(T.ramp((g * SCORE_PANELS + j) * PANEL, 1, PANEL))
                    if fold:
                        i = T.meta_var(T.min(row0 + r, spec.seq_q - 1))
                        masked = T.meta_var(
                            acc[r * SCORE_PANELS + j] * T.broadcast(ss, PANEL)
                            + _mask_at(spec, mask, b, h, i, cols)
                        )
                        sc[r, cols] = masked
                        top16[r] = T.max(top16[r], sc[r, cols])
                    else:
                        sc[r, cols] = acc[r * SCORE_PANELS + j]

    return scores


def _softmax_macro(spec: AttentionSpec):
    """TIR macro: each row of sc -> exp(t - max t)'s bf16 bits p16 [MR, padded keys] (zero
    past the keys; two of them are one word of the output matmul's operand) and the row's sum
    z [MR] of the fp32 exps, by which the output is divided (one pass over the row fewer than
    normalizing first). A row of -inf scores (NaN in the graph's softmax): z NaN, or with the
    NaN guard (0) a zero row and z 1."""
    sk, vec = spec.seq_k, spec.seq_k // PANEL * PANEL
    padded = spec.key_panels * PANEL
    ss = T.float32(spec.score_scale)
    empty_z = T.float32(np.nan if spec.nan_value is None else 1.0)
    fold = _folds_mask(spec)

    def bits(e, top):
        return T.Select(top == T.float32(-np.inf), T.uint16(0), T.Cast("uint16", D._bf16_word(e)))

    @T.macro
    def softmax(sc, top16, p16, z, mask, b, h, row0):
        lanes = T.decl_buffer((PANEL,), "float32", scope="local")
        top = T.decl_buffer((2,), "float32", scope="local")  # row max, row sum
        for r in range(MR):
            i = T.meta_var(T.min(row0 + r, spec.seq_q - 1))
            if fold:
                lanes[T.ramp(0, 1, PANEL)] = top16[r]
            else:
                for lane in T.vectorized(PANEL):
                    lanes[lane] = T.float32(-np.inf)
                for j0 in range(vec // PANEL):
                    for lane in T.vectorized(PANEL):
                        j = T.meta_var(j0 * PANEL + lane)
                        sc[r, j] = sc[r, j] * ss + _mask_at(spec, mask, b, h, i, j)
                        lanes[lane] = T.max(lanes[lane], sc[r, j])
            top[0] = T.float32(-np.inf)
            for lane in range(PANEL):
                top[0] = T.max(top[0], lanes[lane])
            for j in range(vec, sk):
                sc[r, j] = sc[r, j] * ss + _mask_at(spec, mask, b, h, i, j)
                top[0] = T.max(top[0], sc[r, j])
            for lane in T.vectorized(PANEL):
                lanes[lane] = T.float32(0)
            for j0 in range(vec // PANEL):
                for lane in T.vectorized(PANEL):
                    j = T.meta_var(j0 * PANEL + lane)
                    e = T.meta_var(fast_exp(sc[r, j] - top[0]))
                    p16[r, j] = bits(e, top[0])
                    lanes[lane] = lanes[lane] + e
            top[1] = T.float32(0)
            for lane in range(PANEL):
                top[1] = top[1] + lanes[lane]
            for j in range(vec, sk):
                sc[r, j] = fast_exp(sc[r, j] - top[0])
                p16[r, j] = bits(sc[r, j], top[0])
                top[1] = top[1] + sc[r, j]
            for j in range(sk, padded):
                p16[r, j] = T.uint16(0)
            z[r] = T.Select(top[0] == T.float32(-np.inf), empty_z, top[1])

    return softmax


def _output_macro(spec: AttentionSpec):
    """TIR macro: out rows [row0, row0 + MR) of head h = pw @ V words, D/16 panels at a time."""
    vpan, pairs = spec.head_dim // PANEL, spec.key_panels * PANEL // 2
    nr = 2 if vpan % 2 == 0 else 1
    tile = _tile_macro(nr, pairs)

    @T.macro
    def output(pw, vp, z, out, bh, b, col, row0):
        acc = T.decl_buffer((MR * nr,), "float32x16", scope="local")
        for g in range(vpan // nr):
            tile(acc, pw, vp, bh, g)
            for r in T.unroll(MR):
                if row0 + r < spec.seq_q:
                    for j in T.unroll(nr):
                        cols = T.meta_var(T.ramp(col + (g * nr + j) * PANEL, 1, PANEL))
                        out[b, row0 + r, cols] = acc[r * nr + j] / T.broadcast(z[r], PANEL)

    return output


def attention16_kernel(spec: AttentionSpec) -> tvm.tirx.PrimFunc:
    """PrimFunc(q, k, v, [mask], out): pack K and V, then one parallel task per MR query rows
    of one head."""
    bsz, sq, heads, dim = spec.batch, spec.seq_q, spec.heads, spec.head_dim
    kpan, half, vpan = spec.key_panels, dim // 2, dim // PANEL
    padded = kpan * PANEL
    tiles = -(-sq // MR)
    tasks = bsz * heads * tiles
    workers = min(tasks, WORKERS)
    per_worker = -(-tasks // workers)
    qs = T.float32(spec.q_scale)
    pack, scores = _pack_macro(spec), _scores_macro(spec)
    softmax, output = _softmax_macro(spec), _output_macro(spec)

    @T.macro
    def body(q, k, v, mask, out):
        kp = T.decl_buffer((bsz * heads, kpan, half, PANEL), "int32")
        vp = T.decl_buffer((bsz * heads, vpan, padded // 2, PANEL), "int32")
        pack(k, v, kp, vp)
        for worker in T.parallel(workers):
            qw = T.decl_buffer((MR, half), "int32")
            sc = T.decl_buffer((MR, padded), "float32")
            p16 = T.decl_buffer((MR, padded), "uint16")
            pw = T.decl_buffer((MR, padded // 2), "int32", data=p16.data)  # the same bytes
            z = T.decl_buffer((MR,), "float32")
            top16 = T.decl_buffer((MR,), "float32x16")
            for task in range(worker * per_worker, T.min((worker + 1) * per_worker, tasks)):
                bh = T.meta_var(task // tiles)
                b = T.meta_var(bh // heads)
                h = T.meta_var(bh % heads)
                row0 = T.meta_var(task % tiles * MR)
                for r, t in T.grid(MR, half):
                    i = T.meta_var(T.min(row0 + r, sq - 1))
                    qw[r, t] = _pair_word(
                        q[b, i, h * dim + 2 * t] * qs, q[b, i, h * dim + 2 * t + 1] * qs
                    )
                scores(qw, kp, sc, top16, mask, bh, b, h, row0)
                softmax(sc, top16, p16, z, mask, b, h, row0)
                output(pw, vp, z, out, bh, b, h * dim, row0)

    @T.macro
    def with_instruction(q, k, v, mask, out):
        with T.attr(0, "pragma_import_llvm", D._DP_IR):
            body(q, k, v, mask, out)

    return _kernel_func(with_instruction, spec)


def _kernel_func(body, spec: AttentionSpec) -> tvm.tirx.PrimFunc:
    q_shape = (spec.batch, spec.seq_q, spec.heads * spec.head_dim)
    kv_shape = (spec.batch, spec.seq_k, spec.heads * spec.head_dim)
    if spec.mask_shape is not None:

        @T.prim_func
        def masked(
            q: T.Buffer(q_shape, "float32"),
            k: T.Buffer(kv_shape, "float32"),
            v: T.Buffer(kv_shape, "float32"),
            mask: T.Buffer(spec.mask_shape, "float32"),
            out: T.Buffer(q_shape, "float32"),
        ):
            T.func_attr(_ATTRS)
            body(q, k, v, mask, out)

        return masked.without_attr("global_symbol").with_attr(KERNEL_ATTR, spec.text())

    @T.prim_func
    def unmasked(
        q: T.Buffer(q_shape, "float32"),
        k: T.Buffer(kv_shape, "float32"),
        v: T.Buffer(kv_shape, "float32"),
        out: T.Buffer(q_shape, "float32"),
    ):
        T.func_attr(_ATTRS)
        body(q, k, v, None, out)

    return unmasked.without_attr("global_symbol").with_attr(KERNEL_ATTR, spec.text())


def reference_attention16(q, k, v, mask, spec: AttentionSpec) -> np.ndarray:
    """numpy model of the kernel: bf16-rounded operands, fp32 sums in the instruction's pair
    order with its denormal handling (`dpbf16.reference_dpbf16`), fp32 softmax (np.exp)."""
    from graphopt.precision_ops import PrecisionMatmulSpec, to_bits

    bsz, sq, sk, heads, dim = spec.batch, spec.seq_q, spec.seq_k, spec.heads, spec.head_dim
    f32 = np.float32
    qh = np.asarray(q, f32).reshape(bsz, sq, heads, dim)
    kh = np.asarray(k, f32).reshape(bsz, sk, heads, dim)
    vh = np.asarray(v, f32).reshape(bsz, sk, heads, dim)
    m = np.zeros((1, 1, 1, 1), f32) if mask is None else np.asarray(mask, f32)
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    out = np.zeros((bsz, sq, heads, dim), f32)
    s_spec = PrecisionMatmulSpec((sq, dim), sk, "bf16")
    o_spec = PrecisionMatmulSpec((sq, sk), dim, "bf16")
    for b in range(bsz):
        for h in range(heads):
            kb = to_bits((kh[b, :, h] * f32(spec.k_scale)).T, "bf16")
            s = D.reference_dpbf16(qh[b, :, h] * f32(spec.q_scale), kb, s_spec)
            t = s * f32(spec.score_scale) + m[min(b, m.shape[0] - 1), min(h, m.shape[1] - 1)]
            with np.errstate(invalid="ignore"):  # rows of -inf: NaN, as the graph's softmax
                e = np.exp(t - t.max(axis=1, keepdims=True)).astype(f32)
            z = e.sum(axis=1, keepdims=True, dtype=f32)
            empty = np.isneginf(t.max(axis=1))
            e[empty] = 0
            z[empty] = np.nan if spec.nan_value is None else 1
            with np.errstate(invalid="ignore"):
                out[b, :, h] = D.reference_dpbf16(e, to_bits(vh[b, :, h], "bf16"), o_spec) / z
    return out.reshape(bsz, sq, heads * dim)
