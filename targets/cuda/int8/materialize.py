"""GPU kernels for the int8 ops: what `materialize-int8-cuda` builds for one recipe.

`build(recipe)` returns a `Built`: the kernels (unscheduled blocks: `schedule-cuda` gives them
to its rules), the packer of the op's natural-layout constants (`graphopt.int8_ops`) and the
shapes the call is rewritten with:

    conv2d NCHW  depthwise: `kernels.depthwise` (weights as they are); else `gemm.conv_gemm`
                 (weights [G, Np, Kp], K = C/G * KH * KW), output [N, G, Cout/G, OH*OW]
                 reshaped to NCHW
    matmul       `gemm.matmul_gemm` over x reshaped to [rows, K] (weights [Np, Kp]); with
                 fused row quantization a `row_scale` kernel first, whose scales the matmul
                 quantizes with and multiplies back
    add          `kernels.add`, no constants

uint8 activations are read as x - 128 by the GEMMs: `corr` gains 128 * sum_k w.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm

from graphopt.errors import PipelineError
from graphopt.int8_ops import RECIPE_ATTR, Recipe
from graphopt.targets.cuda.int8 import gemm, kernels

ISA = "cuda-dp4a"
Pack = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class Built:
    kernel: tvm.tirx.PrimFunc
    pack: Pack
    out_shape: tuple[int, ...]  # the kernel's output (reshaped to the op's when different)
    x_shape: tuple[int, ...] | None = None  # the kernel's input when x is reshaped
    row_scale: tvm.tirx.PrimFunc | None = None  # fused dynamic matmuls: rs [rows] first


def build(recipe: Recipe) -> Built:
    if recipe.kind == "conv2d" and recipe.layout != "NCHW":
        raise PipelineError(
            "materialize-int8-cuda: int8 convs in NHWC are CPU kernels; lower-int8 for cuda "
            "keeps NCHW"
        )
    if recipe.kind == "conv2d":
        built = _conv(recipe)
    elif recipe.kind == "matmul":
        built = _matmul(recipe)
    elif recipe.kind == "add":
        built = Built(kernels.add(recipe.spec), _unchanged, tuple(recipe.spec.shape))
    else:
        raise PipelineError(f"materialize-int8-cuda: no GPU kernel for int8 op '{recipe.kind}'")
    text = dataclasses.replace(recipe, isa=ISA).text()
    # TE names every function `main`: without the symbol, the module's GlobalVar names it.
    built.kernel = built.kernel.without_attr("global_symbol").with_attr(RECIPE_ATTR, text)
    if built.row_scale is not None:
        built.row_scale = built.row_scale.without_attr("global_symbol")
    return built


def _unchanged(consts: list[np.ndarray]) -> list[np.ndarray]:
    return consts


def _with_shift(corr: np.ndarray, w_sum: np.ndarray, act_dtype: str) -> np.ndarray:
    """corr for activations read as x - shift: acc drops shift * sum_k w, corr adds it."""
    out = corr.astype(np.int64) + gemm.act_shift(act_dtype) * w_sum.astype(np.int64)
    return np.clip(out, -(2**31), 2**31 - 1).astype(np.int32)


def _padded_panel(w: np.ndarray, n_pad: int, k_pad: int) -> np.ndarray:
    """[.., N, K] int8 -> [.., n_pad, k_pad], zeros in the padding."""
    out = np.zeros((*w.shape[:-2], n_pad, k_pad), np.int8)
    out[..., : w.shape[-2], : w.shape[-1]] = w
    return out


def _conv(recipe: Recipe) -> Built:
    spec, zp, ep = recipe.spec, recipe.zp, recipe.ep
    oh, ow = spec.out_hw
    if spec.depthwise:
        return Built(kernels.depthwise(spec, ep, zp), _unchanged, (spec.batch, spec.cout, oh, ow))
    groups, og = spec.groups, spec.cout // spec.groups
    _, n_pad, k_pad = gemm.GemmShape(oh * ow, og, spec.k_group).padded

    def pack(consts):
        w, corr, scale, fbias = consts
        w_sum = w.reshape(spec.cout, -1).astype(np.int64).sum(axis=1)
        panel = _padded_panel(w.reshape(groups, og, spec.k_group), n_pad, k_pad)
        return [panel, _with_shift(corr, w_sum, spec.act_dtype), scale, fbias]

    kernel = gemm.conv_gemm(spec, ep, zp)
    return Built(kernel, pack, (spec.batch, groups, og, oh * ow))


def _matmul(recipe: Recipe) -> Built:
    spec = recipe.spec
    _, n_pad, k_pad = gemm.GemmShape(spec.rows, spec.n, spec.k).padded

    def pack(consts):
        w, corr, scale, fbias = consts
        w_sum = w.astype(np.int64).sum(axis=0)
        panel = _padded_panel(np.ascontiguousarray(w.T), n_pad, k_pad)
        return [panel, _with_shift(corr, w_sum, spec.act_dtype), scale, fbias]

    return Built(
        gemm.matmul_gemm(spec, recipe.ep, recipe.zp),
        pack,
        (spec.rows, spec.n),
        x_shape=(spec.rows, spec.k),
        row_scale=kernels.row_scale(spec) if spec.fused_quant else None,
    )
