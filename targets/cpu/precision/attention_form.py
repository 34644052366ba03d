"""Reads an attention composite function (`fuse`'s `graphopt.attention` group) into the bf16
attention kernel's spec and operands, or None when it is not the multi-head form that kernel
computes (see `targets/cpu/passes/precision_attention.py`)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from graphopt.binding_graph import const_value
from graphopt.targets.cpu.precision.attention import AttentionSpec

Found = tuple[AttentionSpec, relax.Expr, relax.Expr, relax.Expr, relax.Expr | None]
HEADS = [0, 2, 1, 3]  # [B, S, H, D] -> [B, H, S, D] (and back)
HEADS_T = [0, 2, 3, 1]  # [B, S, H, D] -> [B, H, D, S]


def _static(expr) -> tuple[int, ...] | None:
    shape = getattr(expr.ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or not all(isinstance(d, tvm.tirx.IntImm) for d in values):
        return None
    return tuple(int(d) for d in values)


class _Body:
    """One composite's bindings, its parameters mapped to the call's arguments."""

    def __init__(self, func: relax.Function, args: dict) -> None:
        self.args = args
        self.value = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
        self.out = func.body.body

    def _call(self, expr, op: str):
        value = self.value.get(expr) if isinstance(expr, relax.Var) else expr
        if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get(op):
            return value
        return None

    def _scalar(self, expr) -> float | None:
        """A constant scalar (a parameter bound to one at the call, or a literal)."""
        data = const_value(self.args.get(expr, expr))
        if data is not None and data.size == 1 and data.dtype == np.float32:
            return float(data.reshape(()))
        return None

    def _scaled(self, expr) -> tuple[relax.Expr, float]:
        """x * c or c * x (c a constant scalar) -> (x, c); anything else -> (expr, 1)."""
        call = self._call(expr, "relax.multiply")
        if call is not None:
            for x, c in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
                value = self._scalar(c)
                if value is not None:
                    return x, value
        call = self._call(expr, "relax.divide")
        if call is not None and self._scalar(call.args[1]) not in (None, 0.0):
            return call.args[0], 1.0 / self._scalar(call.args[1])
        return expr, 1.0

    def _heads(self, expr, axes: list[int]) -> tuple[relax.Expr, int, int] | None:
        """permute(reshape(x [B, S, H*D], [B, S, H, D]), axes) -> (x argument, H, D)."""
        perm = self._call(expr, "relax.permute_dims")
        if perm is None or [int(a) for a in perm.attrs.axes] != axes:
            return None
        reshape = self._call(perm.args[0], "relax.reshape")
        if reshape is None or reshape.args[0] not in self.args:
            return None
        src, split = _static(self.args[reshape.args[0]]), _static(reshape)
        if src is None or split is None or len(src) != 3 or len(split) != 4:
            return None
        if split[:2] != src[:2] or split[2] * split[3] != src[2]:
            return None
        return self.args[reshape.args[0]], split[2], split[3]

    def _keys(self, expr) -> tuple[relax.Expr, int, int] | None:
        """K^T [B, H, D, S]: one permute of the reshaped k, or two."""
        found = self._heads(expr, HEADS_T)
        if found is not None:
            return found
        perm = self._call(expr, "relax.permute_dims")
        if perm is None or [int(a) for a in perm.attrs.axes] != [0, 1, 3, 2]:
            return None
        return self._heads(perm.args[0], HEADS)

    def _probs(self, expr) -> tuple[relax.Expr, float | None] | None:
        """softmax(t, -1) [-> where(isnan(p), c, p)] -> (t, c or None)."""
        nan_value = None
        where = self._call(expr, "relax.where")
        if where is not None:
            test = self._call(where.args[0], "relax.isnan")
            nan_value = self._scalar(where.args[1])
            if test is None or nan_value is None or test.args[0] != where.args[2]:
                return None
            expr = where.args[2]
        softmax = self._call(expr, "relax.nn.softmax")
        if softmax is None or int(softmax.attrs.axis) not in (-1, 3):
            return None
        return softmax.args[0], nan_value

    def _mask(self, expr) -> tuple[relax.Expr, relax.Expr | None] | None:
        """scores [+ mask] -> (scores, mask argument or None); a mask is float32 and static."""
        add = self._call(expr, "relax.add")
        if add is None:
            return expr, None
        for s, m in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
            if self._call(s, "relax.matmul") is not None or self._scaled(s)[1] != 1.0:
                mask = self.args.get(m, m)
                shape = _static(mask)
                if shape is None or mask.ty.dtype != "float32" or not 1 <= len(shape) <= 4:
                    return None
                return s, mask
        return None

    def match(self) -> Found | None:
        reshape = self._call(self.out, "relax.reshape")
        back = self._call(reshape.args[0], "relax.permute_dims") if reshape is not None else None
        if back is None or [int(a) for a in back.attrs.axes] != HEADS:
            return None
        pv = self._call(back.args[0], "relax.matmul")
        vh = self._heads(pv.args[1], HEADS) if pv is not None else None
        probs = self._probs(pv.args[0]) if vh is not None else None
        masked = self._mask(probs[0]) if probs is not None else None
        if masked is None:
            return None
        scores, score_scale = self._scaled(masked[0])
        qk = self._call(scores, "relax.matmul")
        if qk is None:
            return None
        (qe, q_scale), (ke, k_scale) = self._scaled(qk.args[0]), self._scaled(qk.args[1])
        qh, kh = self._heads(qe, HEADS), self._keys(ke)
        return _spec(qh, kh, vh, masked[1], (q_scale, k_scale, score_scale, probs[1]))


def _spec(qh, kh, vh, mask, scales) -> Found | None:
    if qh is None or kh is None or qh[1:] != kh[1:] or vh[1:] != kh[1:]:
        return None
    (q, heads, dim), k, v = qh, kh[0], vh[0]
    qs, ks = _static(q), _static(k)
    if qs[0] != ks[0] or _static(v) != ks:
        return None
    mask_shape = _static(mask) if mask is not None else None
    full = (qs[0], heads, qs[1], ks[1])
    if mask_shape is not None and any(
        n not in (1, f) for n, f in zip(mask_shape, full[4 - len(mask_shape) :])
    ):
        return None
    q_scale, k_scale, score_scale, nan_value = scales
    spec = AttentionSpec(
        qs[0], qs[1], ks[1], heads, dim, q_scale, k_scale, score_scale, mask_shape, nan_value
    )
    return spec, q, k, v, mask


def read_attention(func: relax.Function, args: dict) -> Found | None:
    """(spec, q, k, v, mask) of a composite called with `args` (parameter -> argument)."""
    return _Body(func, args).match()
