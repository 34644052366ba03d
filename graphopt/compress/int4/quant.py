"""Group-wise int4 weights: quantize, pack two nibbles per byte, and back.

A matmul weight W [K, N] (y = x @ W) is quantized per output column n in groups of
`group` consecutive k (the last group may be shorter). Each group has an fp32 scale s and an
unsigned 4-bit zero point z; the stored nibble q is in [0, 15] and the weight it stands for is
(q - z) * s, computed in fp32 (q - z is an exact small integer: one rounding).

- symmetric: s = max|w| / 7, z = 8 (not stored): q - 8 in [-8, 7], +-max exact.
- asymmetric: s = (max - min) / 15, z = round(-min / s) clipped to [0, 15], stored as uint8.

Natural layout (what `lower-int4` puts in the graph, like ONNX MatMulNBits): `packed` uint8
[N, ceil(K / 2)], byte i of row n holding k = 2i in its low nibble and k = 2i + 1 in its high
nibble (a last high nibble of odd K is 0); `scales` fp32 (or fp16, `scale_dtype`) [N, G];
`zeros` uint8 [N, G] or None. fp16 scales are rounded before the codes are chosen, so the
codes fit the scale that is stored; they take 2 bytes a group instead of 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYM_ZERO = 8
GROUP_SIZES = (32, 64, 128)


@dataclass
class Int4Weight:
    """One quantized weight in natural layout; `k` is the unpadded reduction length."""

    packed: np.ndarray  # uint8 [N, ceil(K / 2)]
    scales: np.ndarray  # fp32 or fp16 [N, groups]
    zeros: np.ndarray | None  # uint8 [N, groups]; None: symmetric (zero point 8)
    k: int
    group: int
    # AWQ: the kernel's input is x * act_scale [K] (awq.py); None: x as it is
    act_scale: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.packed.shape[0])

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def nbytes(self) -> int:
        extra = 0 if self.zeros is None else self.zeros.nbytes
        return self.packed.nbytes + self.scales.nbytes + extra

    def codes(self) -> np.ndarray:
        """The nibbles, uint8 [N, K]."""
        return unpack_nibbles(self.packed, self.k)

    def dequantize(self) -> np.ndarray:
        """fp32 [K, N]: (q - z) * s per element, as the kernels compute it."""
        q = self.codes().astype(np.float32)
        z = np.float32(SYM_ZERO) if self.zeros is None else self.zeros.astype(np.float32)
        zk = z if np.ndim(z) == 0 else np.repeat(z, self.group, axis=1)[:, : self.k]
        sk = np.repeat(self.scales.astype(np.float32), self.group, axis=1)[:, : self.k]
        return np.ascontiguousarray(((q - zk) * sk).T.astype(np.float32))

    def effective(self) -> np.ndarray:
        """fp32 [K, N]: the weight the layer computes with, the input scale folded in."""
        w = self.dequantize()
        return w if self.act_scale is None else w * self.act_scale[:, None].astype(np.float32)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 [.., K] values in [0, 15] -> uint8 [.., ceil(K / 2)] (k even: low nibble)."""
    q = np.asarray(q, np.uint8)
    if q.size and q.max() > 15:
        raise ValueError("int4 values must be in [0, 15]")
    k = q.shape[-1]
    if k % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), np.uint8)], axis=-1)
    return np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4))


def unpack_nibbles(packed: np.ndarray, k: int) -> np.ndarray:
    """The inverse of `pack_nibbles`: uint8 [.., K]."""
    packed = np.asarray(packed, np.uint8)
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 15
    out[..., 1::2] = packed >> 4
    return np.ascontiguousarray(out[..., :k])


SCALE_DTYPES = ("float32", "float16")
_F16_RANGE = (float(np.finfo(np.float16).tiny), float(np.finfo(np.float16).max))


def stored_scale(scale: np.ndarray, scale_dtype: str = "float32") -> np.ndarray:
    """The fp32 value of `scale` once stored as `scale_dtype` (fp16: clamped into its normal
    range, then rounded)."""
    if scale_dtype == "float32":
        return np.asarray(scale, np.float32)
    return np.clip(scale, *_F16_RANGE).astype(np.float16).astype(np.float32)


def group_params(
    w: np.ndarray, symmetric: bool, scale_dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero) of the rows of w [.., group] (one group per row), both float32; an
    all-zero group gets scale 1."""
    w = np.asarray(w, np.float32)
    if symmetric:
        amax = np.abs(w).max(axis=-1)
        scale = stored_scale(np.where(amax > 0, amax / 7.0, 1.0), scale_dtype)
        return scale, np.full_like(scale, SYM_ZERO)
    lo = np.minimum(w.min(axis=-1), 0.0)
    hi = np.maximum(w.max(axis=-1), 0.0)
    scale = stored_scale(np.where(hi > lo, (hi - lo) / 15.0, 1.0), scale_dtype)
    zero = np.clip(np.round(-lo / scale), 0, 15).astype(np.float32)
    return scale, zero


# Range shrink factors tried per group by `clip_search`: clipping a group's few extreme weights
# buys a finer step for all the others.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def clip_search(
    w: np.ndarray,
    symmetric: bool,
    importance: np.ndarray | None = None,
    scale_dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """`group_params` with each group's range shrunk by the ratio of `CLIP_RATIOS` that
    minimizes its squared rounding error, weighted per position by `importance` [group]
    (the inputs' mean square, H's diagonal) when given."""
    w = np.asarray(w, np.float32)
    weight = np.ones(w.shape[-1]) if importance is None else np.asarray(importance, np.float64)
    best = None
    for r in CLIP_RATIOS:
        scale, zero = group_params(w * np.float32(r), symmetric, scale_dtype)
        deq = dequantize_values(
            quantize_values(w, scale[..., None], zero[..., None]), scale[..., None], zero[..., None]
        )
        err = (((deq - w) ** 2) * weight).sum(axis=-1)
        if best is None:
            best = [err, scale, zero]
            continue
        better = err < best[0]
        best = [
            np.where(better, err, best[0]),
            np.where(better, scale, best[1]),
            np.where(better, zero, best[2]),
        ]
    return best[1].astype(np.float32), best[2].astype(np.float32)


def quantize_values(w: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Nibbles of w given its (broadcastable) scale and zero: clip(round(w / s) + z)."""
    return np.clip(np.round(w / scale) + zero, 0, 15).astype(np.uint8)


def dequantize_values(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def from_codes(
    q_nk: np.ndarray, scales, zeros, k: int, group: int, symmetric: bool, scale_dtype="float32"
):
    """An `Int4Weight` from nibbles [N, K] and per-group [N, G] scales / zero points."""
    z = None if symmetric else np.asarray(zeros).astype(np.uint8)
    return Int4Weight(pack_nibbles(q_nk), np.asarray(scales).astype(scale_dtype), z, k, group)


def quantize_rtn(
    w: np.ndarray,
    group: int,
    symmetric: bool = True,
    clip: bool = False,
    importance=None,
    scale_dtype: str = "float32",
) -> Int4Weight:
    """Round-to-nearest group-wise int4 of W [K, N] (the baseline GPTQ improves on); `clip`:
    each group's range from `clip_search` (weighted by `importance` [K] when given)."""
    w = np.asarray(w, np.float32)
    k, n = w.shape
    groups = -(-k // group)
    padded = np.zeros((groups * group, n), np.float32)
    padded[:k] = w
    # [N, G, group]; zero rows of the padding never widen a range (ranges include 0 or use
    # max|w|), and their codes are dropped
    blocks = padded.T.reshape(n, groups, group)
    if k % group:  # the last group's padding must not count for asymmetric min / max
        tail = k - (groups - 1) * group
        blocks[:, -1, tail:] = blocks[:, -1, :1]
    if clip:
        imp = np.zeros(groups * group)
        imp[:k] = 1.0 if importance is None else importance
        scale, zero = clip_search(blocks, symmetric, imp.reshape(groups, group), scale_dtype)
    else:
        scale, zero = group_params(blocks, symmetric, scale_dtype)
    q = quantize_values(blocks, scale[..., None], zero[..., None]).reshape(n, -1)[:, :k]
    return from_codes(q, scale, zero, k, group, symmetric, scale_dtype)
