"""Fold inference batch-norm into the preceding conv2d or matmul, also through a bias add.

Before:  c = R.nn.conv2d(x, W); d = R.add(c, B); b = R.nn.batch_norm(d, g, beta, mean, var)[0]
After:   c = R.nn.conv2d(x, W * s); b = R.add(c, (B - mean) * s + beta)
         where s = g / sqrt(var + eps), per output channel.

The decomposed form (what a batch-norm exported as Mul and Add, or already decomposed, looks
like) folds the same way:
Before:  c = R.nn.conv2d(x, W); d = R.add(c, B); e = R.multiply(d, s); f = R.add(e, t)
After:   c = R.nn.conv2d(x, W * s); f = R.add(c, B * s + t)     (s, t constant per channel)

TVM's FoldBatchnormToConv2D misses the bias add that every ONNX conv with a bias puts between
conv and batch-norm. Batch-norms that cannot be folded (non-constant weights, other producers)
are decomposed into per-channel multiply and add, which fusion merges into the producer.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, wildcard

from graphopt import _tvm
from graphopt.pass_helpers import call_count
from graphopt.pass_infra import GraphPass, PassResult, register_pass

_BN = "relax.nn.batch_norm"


def _pattern():
    """batch_norm(producer [+ bias], consts...)[0], producer = conv2d or matmul by a constant."""
    data, weight, bias = wildcard(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(data, weight)
    matmul = is_op("relax.matmul")(data, weight)
    producer = conv | matmul
    with_bias = is_op("relax.add")(producer, bias)
    params = [is_const() for _ in range(4)]
    bn = is_op(_BN)(producer | with_bias, *params)
    return is_tuple_get_item(bn, 0), bn, data, weight, bias, conv, matmul, params


class _Folder:
    """Rewriter callback for relax.dpl.rewrite_call; counts what it folded."""

    def __init__(self) -> None:
        (
            self.pattern,
            self.bn,
            self.data,
            self.weight,
            self.bias,
            self.conv,
            self.matmul,
            self.params,
        ) = _pattern()
        self.folded = {"conv2d": 0, "matmul": 0}

    def __call__(self, orig: relax.Expr, m: dict) -> relax.Expr:
        bn_call = m[self.bn]
        gamma, beta, mean, var = (_tvm.constant_value(m[p]).astype(np.float64) for p in self.params)
        weight = _tvm.constant_value(m[self.weight])
        scale = gamma / np.sqrt(var + float(bn_call.attrs.epsilon))
        channels = scale.shape[0]
        bias = np.zeros(channels)
        if self.bias in m:
            bias_arr = _tvm.constant_value(m[self.bias])
            if bias_arr.size != channels:
                return orig
            bias = bias_arr.reshape(-1).astype(np.float64)
        new_bias = (bias - mean) * scale + beta
        if self.conv in m:
            conv = m[self.conv]
            ndim = len(weight.shape)
            ok = (
                conv.attrs.data_layout == "NCHW"
                and conv.attrs.kernel_layout == "OIHW"
                and int(bn_call.attrs.axis) in (1, -3)
                and weight.shape[0] == channels
            )
            if not ok:
                return orig
            folded_w = weight * scale.reshape((-1,) + (1,) * (ndim - 1))
            new = relax.op.nn.conv2d(
                m[self.data], _const(folded_w, weight.dtype), **_conv_args(conv)
            )
            bias_shape = (1, channels, 1, 1)
            kind = "conv2d"
        else:
            rank = len(m[self.matmul].ty.shape.values)
            if len(weight.shape) != 2 or int(bn_call.attrs.axis) not in (rank - 1, -1):
                return orig
            folded_w = weight * scale.reshape(1, -1)
            new = relax.op.matmul(m[self.data], _const(folded_w, weight.dtype))
            bias_shape = (channels,)
            kind = "matmul"
        self.folded[kind] += 1
        return relax.op.add(new, _const(new_bias.reshape(bias_shape), weight.dtype))


class _AffineFolder:
    """producer [+ B] -> multiply by s [-> add t], s and t constant per output channel.

    Folds only when the producer and the intermediate results have no other user (otherwise
    the producer would be computed twice). Run once per top: `add(multiply(..), t)` first,
    then the bare `multiply`.
    """

    def __init__(self) -> None:
        self.data, self.weight, self.bias = wildcard(), is_const(), is_const()
        self.scale, self.shift = is_const(), is_const()
        self.conv = is_op("relax.nn.conv2d")(self.data, self.weight)
        self.matmul = is_op("relax.matmul")(self.data, self.weight)
        producer = self.conv | self.matmul
        self.biased = is_op("relax.add")(producer, self.bias) | producer
        self.scaled = is_op("relax.multiply")(self.biased, self.scale)
        self.tops = (is_op("relax.add")(self.scaled, self.shift), self.scaled)
        self.uses: dict = {}
        self.folded = {"conv2d": 0, "matmul": 0}

    def rewrite(self, func: relax.Function) -> relax.Function:
        for top in self.tops:
            self.uses = _use_counts(func)
            func = relax.dpl.rewrite_call(top, self, func)
        return func

    def __call__(self, orig: relax.Expr, m: dict) -> relax.Expr:
        get = lambda p: m[p] if p in m else None  # noqa: E731
        prod = m[self.conv] if self.conv in m else m[self.matmul]
        inner = [prod, m[self.biased]] + ([m[self.scaled]] if self.shift in m else [])
        if any(self.uses.get(e, 2) > 1 for e in inner):  # unknown: assume shared
            return orig
        out_ty = prod.ty
        if not isinstance(out_ty, relax.TensorType) or out_ty.shape is None:
            return orig
        if not _tvm.structural_equal(out_ty, orig.ty):
            return orig  # the constants broadcast the result beyond the producer's shape
        rank = len(out_ty.shape.values)
        weight = _tvm.constant_value(m[self.weight])
        if weight.dtype.kind != "f":
            return orig
        is_conv = self.conv in m
        if is_conv and not (
            prod.attrs.data_layout == "NCHW" and prod.attrs.kernel_layout == "OIHW"
        ):
            return orig
        if not is_conv and len(weight.shape) != 2:
            return orig
        channels = weight.shape[0] if is_conv else weight.shape[1]
        axis = 1 if is_conv else rank - 1
        vectors = [_per_channel(get(p), rank, axis, channels) for p in (self.scale, self.shift)]
        bias = _per_channel(get(self.bias), rank, axis, channels)
        if any(v is None for v in [*vectors, bias]):
            return orig
        scale, shift = vectors
        new_bias = bias * scale + shift
        if is_conv:
            folded_w = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            new = relax.op.nn.conv2d(
                m[self.data], _const(folded_w, weight.dtype), **_conv_args(prod)
            )
            bias_shape = (1, channels, 1, 1)
        else:
            folded_w = weight * scale.reshape(1, -1)
            new = relax.op.matmul(m[self.data], _const(folded_w, weight.dtype))
            bias_shape = (channels,)
        result = relax.op.add(new, _const(np.asarray(new_bias).reshape(bias_shape), weight.dtype))
        self.folded["conv2d" if is_conv else "matmul"] += 1
        return result


def _per_channel(const, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """A constant that varies only along `axis` of a rank-`rank` result, as a float64 vector of
    `channels` values; zeros for a missing constant; None if it does not fit."""
    if const is None:
        return np.zeros(channels)
    value = _tvm.constant_value(const)
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,)).copy()


def _use_counts(func: relax.Function) -> dict:
    """Bound value -> how many times its var is used; a var leaving the block counts once more."""
    var_uses: dict = {}

    def use(e):
        if isinstance(e, relax.Var):
            var_uses[e] = var_uses.get(e, 0) + 1

    def visit(e):
        if isinstance(e, relax.Call):
            for arg in e.args:
                use(arg)
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                use(f)
        elif isinstance(e, relax.TupleGetItem):
            use(e.tuple_value)

    relax.analysis.post_order_visit(func.body, visit)
    use(func.body.body)
    counts = {}
    for block in func.body.blocks:
        for b in block.bindings:
            escapes = 0 if isinstance(b.var, relax.DataflowVar) else 1
            counts[b.value] = var_uses.get(b.var, 0) + escapes
    return counts


def _const(value: np.ndarray, dtype) -> relax.Constant:
    return relax.const(value.astype(dtype))


def _conv_args(conv: relax.Call) -> dict:
    a = conv.attrs
    return {
        "strides": [int(v) for v in a.strides],
        "padding": [int(v) for v in a.padding],
        "dilation": [int(v) for v in a.dilation],
        "groups": int(a.groups),
        "out_dtype": str(conv.ty.dtype),
    }


@register_pass
class FoldBatchnorm(GraphPass):
    """Fold inference batch-norm into conv2d/matmul weights, through bias adds."""

    name = "fold-batchnorm"

    def run(self, mod: tvm.IRModule) -> PassResult:
        folder = _Folder()
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        affine = {"conv2d": 0, "matmul": 0}
        for gvar, func in mod.functions.items():
            if not isinstance(func, relax.Function) or _sealed(func):
                continue
            if call_count(tvm.IRModule({"f": func}), _BN):
                func = relax.dpl.rewrite_call(folder.pattern, folder, func)
            if isinstance(func.body, relax.SeqExpr):
                affine_folder = _AffineFolder()
                func = affine_folder.rewrite(func)
                for k, v in affine_folder.folded.items():
                    affine[k] += v
            new[gvar] = func
        remaining = call_count(new, _BN)
        stats = {
            "folded_into_conv": folder.folded["conv2d"],
            "folded_into_matmul": folder.folded["matmul"],
            "affine_folded": affine["conv2d"] + affine["matmul"],
            "decomposed": remaining,
        }
        if not remaining and _tvm.structural_equal(new, mod):
            return PassResult(mod, False, stats)
        cleanup = [relax.transform.DeadCodeElimination()]
        if remaining:
            cleanup.insert(0, relax.transform.DecomposeOpsForInference())
        new = tvm.transform.Sequential(cleanup)(new)
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)


def _sealed(func: relax.Function) -> bool:
    """Fused groups and partitioned functions: never rewritten from outside."""
    attrs = func.attrs
    return attrs is not None and any(k in attrs for k in ("Primitive", "Composite", "Codegen"))
