"""Fold inference batch-norm into the preceding conv2d or matmul, also through a bias add.

Before:  c = R.nn.conv2d(x, W); d = R.add(c, B); b = R.nn.batch_norm(d, g, beta, mean, var)[0]
After:   c = R.nn.conv2d(x, W * s); b = R.add(c, (B - mean) * s + beta)
         where s = g / sqrt(var + eps), per output channel.

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
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.passes._common import call_count

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
        before = call_count(mod, _BN)
        if before == 0:
            return PassResult(
                mod, False, {"folded_into_conv": 0, "folded_into_matmul": 0, "decomposed": 0}
            )
        folder = _Folder()
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                new[gvar] = relax.dpl.rewrite_call(folder.pattern, folder, func)
        remaining = call_count(new, _BN)
        cleanup = [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.DeadCodeElimination(),
        ]
        new = tvm.transform.Sequential(cleanup)(new)
        stats = {
            "folded_into_conv": folder.folded["conv2d"],
            "folded_into_matmul": folder.folded["matmul"],
            "decomposed": remaining,
        }
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)
