"""schedule-cpu's int8 hook: rebuild `lower-int8` kernels for the target actually compiled for.

`lower-int8` runs among the graph passes, where no target may be current; it then builds for
this host's CPU. Each kernel carries its recipe (`RECIPE_ATTR`: kind, shapes, zero point,
epilogue, scheme). `schedule-cpu` runs under the real target and calls `retarget`: kernels
built for another dot-product scheme (vnni on a host, the target an AVX2 Zen3 or an ARM board)
are rebuilt for the target's scheme, and the constant operands of their calls (packed
weights, per-channel zero-point correction, padded per-channel arrays) are repacked to match.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.errors import PipelineError
from graphopt.targets.cpu.int8 import conv_nchw as CN
from graphopt.targets.cpu.int8 import depthwise_nhwc as DW
from graphopt.targets.cpu.int8 import kernels as K

RECIPE_ATTR = "graphopt.int8_kernel"


def recipe(kind: str, spec, isa: K.Isa, zp: int, ep: K.Epilogue, x_shape=None) -> str:
    """The JSON recipe stored on a kernel (everything needed to rebuild it)."""
    body = {
        "kind": kind,
        "isa": isa.name,
        "spec": dataclasses.asdict(spec),
        "zp": zp,
        "ep": dataclasses.asdict(ep),
        "x_shape": list(x_shape) if x_shape is not None else None,
    }
    return json.dumps(body)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def retarget(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, int]:
    """Rebuild the int8 kernels whose scheme is not the target's; returns (module, count)."""
    isa = K.isa_for_target(target)
    stale = {}
    for gvar, func in mod.functions.items():
        attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) else None
        if attrs is not None and RECIPE_ATTR in attrs:
            r = json.loads(str(attrs[RECIPE_ATTR]))
            if r["isa"] not in (isa.name, "any"):  # "any": no dot instruction (add, quantize)
                stale[gvar] = _rebuild(r, isa)
    if not stale:
        return mod, 0
    # New GlobalVars: a GlobalVar's type is its function's signature, which changed.
    mutator = _Repack(mod, stale)
    updated = {
        gvar: mutator.visit_expr(func)
        for gvar, func in mod.functions.items()
        if isinstance(func, relax.Function)
    }
    built = mutator.builder_.get()
    new = tvm.IRModule(
        {g: f for g, f in built.functions.items() if g not in stale}, attrs=mod.attrs
    )
    for gvar, func in updated.items():
        new[gvar] = func
    return new, len(stale)


Repack = Callable[[list[np.ndarray]], list[np.ndarray]]


def _rebuild(r: dict, isa: K.Isa) -> tuple[tvm.tirx.PrimFunc, Repack]:
    """The kernel for `isa` and the function repacking its call's constants."""
    old = K.ISAS[r["isa"]]
    ep = K.Epilogue(**r["ep"])
    zp = r["zp"]
    if r["kind"] == "depthwise":
        spec = K.ConvSpec(**_tuples(r["spec"]))
        func = CN.depthwise_kernel(spec, isa, zp, ep)
        repack = lambda consts: consts  # noqa: E731 - the scheme only changes the lanes
    elif r["kind"] == "depthwise_nhwc":
        spec = K.ConvSpec(**_tuples(r["spec"]))
        func = DW.depthwise_nhwc_kernel(spec, isa, zp, ep)
        cp = DW.channel_pad(spec.cout, isa)

        def repack(consts, cp=cp):  # channels padded to the new scheme's vector width
            def fit(a):
                out = np.zeros((*a.shape[:-1], cp), a.dtype)
                keep = min(cp, a.shape[-1])
                out[..., :keep] = a[..., :keep]
                return out

            return [fit(a) for a in consts]
    elif r["kind"] == "conv2d":
        spec = K.ConvSpec(**_tuples(r["spec"]))
        plan_old, plan = CN.conv_plan(spec, old), CN.conv_plan(spec, isa)
        func = CN.conv2d_kernel(spec, plan, zp, ep)

        def repack(consts, spec=spec, plan_old=plan_old, plan=plan):
            og = spec.cout // spec.groups
            words = consts[0]
            w = _unpack(words, old.kpack)[:, :og, : spec.k_group]  # [G, og, K]
            shift = (old.offset(spec.act_dtype) - isa.offset(spec.act_dtype)) * w.sum(-1)

            def per_channel(a):
                return a.reshape(spec.groups, plan_old.og_pad)[:, :og]

            corr = per_channel(consts[1]).astype(np.int64) + shift
            out = [K.pack_words(_pad_rows(w, plan.og_pad), isa.kpack)]
            for a in (corr.astype(np.int32), per_channel(consts[2]), per_channel(consts[3])):
                out.append(_pad_rows(a[..., None], plan.og_pad)[..., 0].reshape(-1))
            return out
    elif r["kind"] == "window":
        spec = K.ConvSpec(**_tuples(r["spec"]))
        func, repack = _rebuild_window(spec, old, isa, zp, ep)
    else:
        spec = K.MatmulSpec(**r["spec"])
        plan_old, plan = K.matmul_plan(spec, old), K.matmul_plan(spec, isa)
        func = K.matmul_kernel(spec, plan, tuple(r["x_shape"]), zp, ep)

        def repack(consts, spec=spec, plan_old=plan_old, plan=plan):
            w = _unpack_panels(consts[0], plan_old)[: spec.n, : spec.k].T  # [K, N]
            shift = (old.offset(spec.act_dtype) - isa.offset(spec.act_dtype)) * w.sum(0)
            weights = K.pack_matmul_weight(w.astype(np.int8), plan)
            return [weights, *_per_channel(consts, shift, spec.n, plan.n_pad)]

    return func.with_attr(RECIPE_ATTR, recipe(r["kind"], spec, isa, zp, ep, r["x_shape"])), repack


def _rebuild_window(spec: K.ConvSpec, old: K.Isa, isa: K.Isa, zp: int, ep: K.Epilogue):
    """An NHWC window conv (`lower-int8`'s matmul over windows) for another scheme."""

    def plan_for(scheme):
        k = spec.kh * spec.kw * K.window_words(spec.cin, scheme) * scheme.kpack
        oh, ow = spec.out_hw
        mspec = K.MatmulSpec(spec.batch * oh * ow, k, spec.cout, spec.act_dtype)
        return mspec, K.matmul_plan(mspec, scheme)

    (_, plan_old), (mspec, plan) = plan_for(old), plan_for(isa)
    x_shape = (spec.batch, spec.height, spec.width, spec.cin)
    func = K.matmul_kernel(mspec, plan, x_shape, zp, ep, window=spec)

    def repack(consts):
        rows = _unpack_panels(consts[0], plan_old)[: spec.cout]
        taps = rows.reshape(spec.cout, spec.kh, spec.kw, -1)
        w = taps[..., : spec.cin].transpose(0, 3, 1, 2)  # OIHW
        shift = (old.offset(spec.act_dtype) - isa.offset(spec.act_dtype)) * w.sum((1, 2, 3))
        weights = K.pack_window_weight(w.astype(np.int8), plan)
        return [weights, *_per_channel(consts, shift, spec.cout, plan.n_pad)]

    return func, repack


def _unpack_panels(panels: np.ndarray, plan: K.MatmulPlan) -> np.ndarray:
    """Matmul weight panels [col_tiles, kwords, step] -> the values [n_pad, K] (int64)."""
    words = panels.transpose(0, 2, 1).reshape(plan.n_pad, plan.kwords)
    return _unpack(words, plan.isa.kpack)


def _per_channel(consts: list, shift: np.ndarray, n: int, n_pad: int) -> list[np.ndarray]:
    """corr (+ the domain shift's correction), scale and fbias of n channels, padded."""
    corr = (consts[1][:n].astype(np.int64) + shift).astype(np.int32)
    out = []
    for a in (corr, consts[2][:n], consts[3][:n]):
        padded = np.zeros(n_pad, a.dtype)
        padded[:n] = a
        out.append(padded)
    return out


def _unpack(words: np.ndarray, kpack: int) -> np.ndarray:
    """int32 words -> the int values packed in them (last axis times kpack), as int64."""
    if kpack == 1:
        return words.astype(np.int64)
    narrow = np.int8 if kpack == 4 else np.int16
    flat = np.ascontiguousarray(words).view(narrow)
    return flat.reshape(*words.shape[:-1], words.shape[-1] * kpack).astype(np.int64)


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """[G, r, ...] -> [G, rows, ...] with zero rows appended."""
    out = np.zeros((a.shape[0], rows, *a.shape[2:]), a.dtype)
    out[:, : a.shape[1]] = a
    return out


@relax.expr_functor.mutator
class _Repack(relax.PyExprMutator):
    """Rewrites the constant operands of the calls of rebuilt kernels."""

    def __init__(self, mod: tvm.IRModule, stale: dict) -> None:
        super().__init__(mod)
        self.repack = {g: repack for g, (_f, repack) in stale.items()}
        self.renamed = {g: self.builder_.add_func(f, g.name_hint) for g, (f, _r) in stale.items()}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        is_call_tir = isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"
        if not is_call_tir or call.args[0] not in self.repack:
            return call
        args = list(call.args[1].fields)
        if not all(isinstance(a, tvm.ir.GenericConst) for a in args[1:5]):
            raise PipelineError(
                f"schedule-cpu: cannot rebuild int8 kernel {call.args[0].name_hint} for this "
                "target (its weights are no longer constants); run lower-int8 with isa= the "
                "target's scheme"
            )
        consts = self.repack[call.args[0]]([_tvm.constant_value(a) for a in args[1:5]])
        new_args = [args[0], *(relax.const(c) for c in consts), *args[5:]]
        return relax.call_tir(self.renamed[call.args[0]], relax.Tuple(new_args), call.ty)


def without_int8_kernels(transform, mod: tvm.IRModule) -> tvm.IRModule:
    """Apply a module pass with the int8 kernels set aside, then put them back.

    The kernels are low-level TIR with no root block; passes written for scheduled TE kernels
    (e.g. `SplitLayoutRewritePreproc`, which schedule-cpu runs when an fp32 conv was prepacked
    beside them in a partly-quantized model) abort on such a function. They only see call_tir
    of a GlobalVar they do not rewrite, so the kernels are unaffected.
    """
    kernels = {
        gvar: func
        for gvar, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
        and func.attrs is not None
        and RECIPE_ATTR in func.attrs
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
