"""CPU kernels for the int8 ops: what `materialize-int8` builds for one dot-product scheme.

`build(recipe, isa)` returns the kernel for the op a portable kernel's recipe describes and the
function that packs the op's natural-layout constants (`graphopt.int8_ops`) for it:

    conv2d NCHW   depthwise: `depthwise_kernel` (fp32 FMAs on integers; weights [C, KH*KW],
                  corr + zp * sum w: the kernel subtracts the zero point itself); else
                  `conv2d_kernel` (weights as words [G, og_pad, kwords], constants padded)
    conv2d NHWC   depthwise: `depthwise_nhwc_kernel` (weights [KH*KW, Cp], constants padded
                  to whole vectors); 1x1: the matmul over pixels; else the matmul over windows
    matmul        `matmul_kernel` (weight panels [N / step, kwords, step])
    add, quantize_nhwc  no constants: the vectorized kernels

Schemes that shift the activations (vnni: int8 + 128, sdot: uint8 - 128) take
corr - shift * sum_k w. NHWC convs built as a matmul get the matmul's run-time scale operand
(a constant 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tvm

from graphopt.int4_ops import RECIPE_ATTR as INT4_ATTR
from graphopt.int8_ops import RECIPE_ATTR, MatmulSpec, Recipe, symbolic_rows
from graphopt.precision_depthwise import RECIPE_ATTR as DEPTHWISE16_ATTR
from graphopt.precision_ops import RECIPE_ATTR as PRECISION_ATTR
from graphopt.sparse_ops import RECIPE_ATTR as SPARSE_ATTR
from graphopt.targets.cpu.int8 import conv_nchw as CN
from graphopt.targets.cpu.int8 import depthwise_nhwc as DW
from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.int8 import quantize_nhwc as QN
from graphopt.targets.cpu.int8 import sparse as SP
from graphopt.targets.cpu.precision.attention import KERNEL_ATTR as ATTENTION16_ATTR

# natural constants -> the kernel's constant operands
Pack = Callable[[list[np.ndarray]], list[np.ndarray]]


def build(recipe: Recipe, isa: K.Isa) -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The kernel of `recipe` for `isa` (carrying the recipe and the scheme) and its packer."""
    if recipe.kind == "conv2d" and recipe.layout == "NCHW":
        func, pack = _conv_nchw(recipe, isa)
    elif recipe.kind == "conv2d":
        func, pack = _conv_nhwc(recipe, isa)
    elif recipe.kind == "matmul":
        func, pack = _matmul(recipe, isa)
    elif recipe.kind == "add":
        func, pack = K.add_kernel(recipe.spec), _unchanged
    else:
        func = QN.quantize_nhwc_kernel(recipe.spec, recipe.zp, recipe.out_dtype)
        pack = _unchanged
    built = dataclasses.replace(recipe, isa=isa.name)
    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, built.text()), pack


def _unchanged(consts: list[np.ndarray]) -> list[np.ndarray]:
    return consts


def _padded(values: np.ndarray, length: int, groups: int = 1) -> np.ndarray:
    """Per-channel values padded per group to `length` (rows the kernel computes but drops)."""
    per = values.reshape(groups, -1)
    out = np.zeros((groups, length), values.dtype)
    out[:, : per.shape[1]] = per
    return out.reshape(-1)


def _shifted(corr: np.ndarray, w_sum: np.ndarray, shift: int) -> np.ndarray:
    """corr for activations shifted by `shift` (or read minus the zero point: shift = -zp)."""
    out = corr.astype(np.int64) - shift * w_sum.astype(np.int64)
    return np.clip(out, -(2**31), 2**31 - 1).astype(np.int32)


def _conv_sums(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)


def _conv_nchw(recipe: Recipe, isa: K.Isa):
    spec, zp = recipe.spec, recipe.zp
    if spec.depthwise and spec.fp32_exact:

        def pack_depthwise(consts):
            w, corr, scale, fbias = consts
            corr = _shifted(corr, _conv_sums(w), -zp)
            return [w.reshape(spec.cout, -1).astype(np.int8), corr, scale, fbias]

        return CN.depthwise_kernel(spec, isa, zp, recipe.ep), pack_depthwise
    plan = CN.conv_plan(spec, isa)
    off = isa.offset(spec.act_dtype)

    def pack(consts):
        w, corr, scale, fbias = consts
        corr = _shifted(corr, _conv_sums(w), off)
        out = [CN.pack_conv_weight(w, spec, plan)]
        return out + [_padded(a, plan.og_pad, spec.groups) for a in (corr, scale, fbias)]

    return CN.conv2d_kernel(spec, plan, zp, recipe.ep), pack


def _conv_nhwc(recipe: Recipe, isa: K.Isa):
    spec, zp, ep = recipe.spec, recipe.zp, recipe.ep
    if spec.depthwise:
        cp = DW.channel_pad(spec.cout, isa)

        def pack_depthwise(consts):
            w, corr, scale, fbias = consts
            corr = _shifted(corr, _conv_sums(w), -zp)
            taps = np.zeros((spec.kh * spec.kw, cp), np.int8)
            taps[:, : spec.cout] = w.reshape(spec.cout, -1).T  # one vector of channels a tap
            return [taps, *(_padded(a, cp) for a in (corr, scale, fbias))]

        return DW.depthwise_nhwc_kernel(spec, isa, zp, ep), pack_depthwise
    mspec, x_shape, window = _nhwc_matmul(spec, isa)
    plan = K.matmul_plan(mspec, isa)
    func = K.matmul_kernel(mspec, plan, x_shape, zp, ep, window=window)
    off = isa.offset(spec.act_dtype)

    def pack(consts):
        wt, corr, scale, fbias = consts
        corr = _shifted(corr, _conv_sums(wt), off)
        per_channel = [_padded(a, plan.n_pad) for a in (corr, scale, fbias)]
        weights = K.pack_matmul_weight(matmul_weight(recipe, isa, wt), plan)
        return [weights, *per_channel, np.array(1.0, np.float32)]  # no run-time scale

    return func, pack


def _nhwc_matmul(spec, isa: K.Isa) -> tuple[MatmulSpec, tuple, object]:
    """An NHWC conv as the int8 matmul: its spec, x's shape and the window (None for a 1x1
    conv, the matmul [N*H*W, C_in] x [C_in, C_out]; else the matmul over each output pixel's
    window, packed from NHWC per task)."""
    n, h, w, cin = spec.batch, spec.height, spec.width, spec.cin
    x_shape = (n, h, w, cin)
    if spec.pointwise:
        return MatmulSpec(symbolic_rows(x_shape), cin, spec.cout, spec.act_dtype), x_shape, None
    oh, ow = spec.out_hw
    k = spec.kh * spec.kw * K.window_words(cin, isa) * isa.kpack
    mspec = MatmulSpec(symbolic_rows((n, oh, ow, k)), k, spec.cout, spec.act_dtype)
    return mspec, x_shape, spec


def has_matmul_weight(recipe: Recipe) -> bool:
    """Whether the op's kernel is the int8 matmul over a weight (matmuls, NHWC convs other than
    depthwise), which has a block-sparse variant."""
    if recipe.kind == "matmul":
        return True
    return recipe.kind == "conv2d" and recipe.layout != "NCHW" and not recipe.spec.depthwise


def matmul_weight(recipe: Recipe, isa: K.Isa, w: np.ndarray) -> np.ndarray:
    """The int8 [K, N] matrix the kernel of a `has_matmul_weight` op multiplies by, from the
    op's natural-layout weight."""
    if recipe.kind == "matmul":
        return w
    if recipe.spec.pointwise:
        return w.reshape(recipe.spec.cout, -1).T
    return K.window_matrix(w, isa)


def build_sparse(recipe: Recipe, isa: K.Isa, density: float) -> tuple[tvm.tirx.PrimFunc, Pack]:
    """The block-sparse kernel (`sparse.py`) of a matmul or NHWC conv recipe and its packer;
    `density`: the largest block density of the layers that will call it."""
    conv = recipe.kind == "conv2d"
    if conv:
        mspec, x_shape, window = _nhwc_matmul(recipe.spec, isa)
    else:
        mspec, x_shape, window = recipe.spec, recipe.x_shape, None
    plan = SP.sparse_plan(mspec, isa)
    func = SP.sparse_matmul_kernel(mspec, plan, x_shape, recipe.zp, recipe.ep, density, window)
    off = isa.offset(mspec.act_dtype)

    def pack(consts):
        w, corr, scale, fbias = consts
        kn = matmul_weight(recipe, isa, w)
        corr = _shifted(corr, kn.astype(np.int64).sum(axis=0), off)
        per_channel = [_padded(a, plan.n_pad) for a in (corr, scale, fbias)]
        run_time_scale = [np.array(1.0, np.float32)] if conv else []
        return [*SP.pack_bsr(kn, isa), *per_channel, *run_time_scale]

    built = dataclasses.replace(recipe, isa=isa.name)
    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, built.text()), pack


def _matmul(recipe: Recipe, isa: K.Isa):
    spec: MatmulSpec = recipe.spec
    plan = K.matmul_plan(spec, isa)
    off = isa.offset(spec.act_dtype)

    def pack(consts):
        w, corr, scale, fbias = consts
        corr = _shifted(corr, w.astype(np.int64).sum(axis=0), off)
        per_channel = [_padded(a, plan.n_pad) for a in (corr, scale, fbias)]
        return [K.pack_matmul_weight(w, plan), *per_channel]

    return K.matmul_kernel(spec, plan, recipe.x_shape, recipe.zp, recipe.ep), pack


def constant_count(recipe: Recipe) -> int:
    """How many constant operands follow the op's inputs in its call (packed together)."""
    return 4 if recipe.kind in ("conv2d", "matmul") else 0


def input_count(recipe: Recipe) -> int:
    """Tensor inputs before the constants (an add has two)."""
    return 2 if recipe.kind == "add" else 1


def without_int8_kernels(transform, mod: tvm.IRModule) -> tvm.IRModule:
    """Apply a module pass with the generated kernels (int8, int4, 16-bit, block-sparse) set
    aside, then put them back.

    The kernels (int4 ones, the 16-bit attention and depthwise kernels too) are low-level TIR
    with no root block; passes written for scheduled TE kernels (e.g.
    `SplitLayoutRewritePreproc`, which schedule-cpu runs when an fp32 conv was prepacked beside
    them in a partly-quantized, partly-sparse or 16-bit model) abort on such a function. They
    only see call_tir of a GlobalVar they do not rewrite, so the kernels are unaffected.
    """
    kernels = {
        gvar: func
        for gvar, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
        and func.attrs is not None
        and (
            any(
                attr in func.attrs for attr in (RECIPE_ATTR, INT4_ATTR, PRECISION_ATTR, SPARSE_ATTR)
            )
            or ATTENTION16_ATTR in func.attrs
            or DEPTHWISE16_ATTR in func.attrs
        )
    }
    if not kernels:
        return transform(mod)
    rest = tvm.IRModule(
        {g: f for g, f in mod.functions.items() if g not in kernels}, attrs=mod.attrs
    )
    out = transform(rest)
    for gvar, func in kernels.items():
        out[gvar] = func
    return out
