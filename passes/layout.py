"""Convert conv2d to the layout the CPU kernels want (NHWC), transposes folded and cancelled.

Plain and depthwise convs are converted; grouped convs with several channels per group keep
their layout. When no two converted convs are neighbours (the fp32 layers `--max-drop` leaves
between int8 kernels), nothing is converted: every conv would pay two transposes.

Wraps `relax.transform.ConvertLayout`, which rewrites each conv2d to the desired layout and
propagates it through layout-agnostic neighbours (elementwise, pads, pooling, reductions), so
the transposes in and out of consecutive convs meet and cancel. Around it:

- before: ONNX importers emit Clip / Relu6 as `call_tir` kernels (`maximum`, `minimum` with a
  scalar), which ConvertLayout cannot see through; a call_tir whose kernel is one elementwise
  max / min / add / multiply of a tensor and a 0-d scalar is raised back to the Relax operator;
- after: weight transposes are folded into the constant weights, and transpose pairs that
  compose to the identity are cancelled.

    before:  y = conv2d(x, W)                                  # NCHW, OIHW
             z = call_tir(maximum, (y, 0.0))
             o = conv2d(z, V)
    after:   xt = permute_dims(x, [0, 2, 3, 1])
             y = conv2d(xt, W', data_layout="NHWC", kernel_layout="OHWI")   # W' constant
             z = maximum(y, 0.0)
             ot = conv2d(z, V', data_layout="NHWC", kernel_layout="OHWI")
             o = permute_dims(ot, [0, 3, 1, 2])

Ops whose layout the CPU kernels do not handle (1-D/3-D and transposed convs and pools, any op
on a 5-D or higher tensor: the channel shuffle's reshape and transpose) are declined: each is
wrapped in a private function for the while, which ConvertLayout cannot see into, so it keeps
its layout and gets transposes at its edges; they are inlined again afterwards. Should TVM's
layout inference still fail, the pass leaves the whole module unchanged (`declined_whole`).

With `sparse_nchw_density` (x86's default) a model whose 1x1 convs are nearly all scattered
zeros keeps NCHW, where the sparse kernels take single zeros (`_sparse_layout.py`; counter
`kept_sparse_nchw`).

Counters: `ops_declined`, `declined_whole`, `convs_converted`, `elementwise_raised`,
`constants_folded`, `transposes_left` (activation transposes in the result: the graph's entry
and exit, and any op the layout could not pass) and `transposes_removed` (of the two per conv
a conv-by-conv conversion needs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx

from graphopt import _tvm
from graphopt.pass_helpers import rewrite_relax_functions
from graphopt.pass_infra import GraphPass, PassResult, make_pass, register_pass
from graphopt.passes._sparse_layout import sparse_nchw_pays
from graphopt.scalar_kernels import raise_scalar_elementwise

_TRANSPOSES = ("relax.permute_dims", "relax.layout_transform")


@register_pass
class Layout(GraphPass):
    """conv2d to NHWC (or another layout), weight transposes folded, transposes cancelled."""

    name = "layout"

    @dataclass(frozen=True)
    class Options:
        data_layout: str = "NHWC"
        kernel_layout: str = "OHWI"
        # > 0: keep NCHW when 1x1 convs with at most this fraction of nonzero weights, their
        # zeros scattered (not in `sparse_block`-channel blocks of density up to
        # `sparse_block_density`), do two thirds of the convs' work (`_sparse_layout.py`)
        sparse_nchw_density: float = 0.0
        sparse_block: int = 16
        sparse_block_density: float = 0.5

    def run(self, mod: tvm.IRModule) -> PassResult:
        stats = dict.fromkeys(
            (
                "convs_converted",
                "elementwise_raised",
                "constants_folded",
                "transposes_left",
                "transposes_removed",
                "ops_declined",
                "declined_whole",
                "kept_sparse_nchw",
            ),
            0,
        )
        todo = _convs_to_convert(mod, self.options.data_layout)
        o = self.options
        if (
            todo
            and o.sparse_nchw_density > 0
            and sparse_nchw_pays(mod, o.sparse_nchw_density, o.sparse_block, o.sparse_block_density)
        ):
            stats["kept_sparse_nchw"] = 1
            return PassResult(mod, False, stats)
        if not todo:
            return PassResult(mod, False, stats)
        before = _count(mod, _TRANSPOSES)
        new = _inline_conv_groups(mod)
        if new is not mod:  # a pad kernel the group held may now fold into the next conv
            new = make_pass("fold-pad").run(new).module
        new, stats["elementwise_raised"] = raise_scalar_elementwise(new)
        new, stats["ops_declined"], declined = _wrap_declined(new)
        desired = {"relax.nn.conv2d": [self.options.data_layout, self.options.kernel_layout]}

        def layouts(call: relax.Call) -> dict:
            is_conv = isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"
            return desired if is_conv and _converts(call) else {}

        try:
            new = relax.transform.ConvertLayout({}, layouts)(new)
        except Exception:  # noqa: BLE001 - a layout TVM cannot infer: keep the module as is
            return PassResult(mod, False, {**dict.fromkeys(stats, 0), "declined_whole": 1})
        new = _unwrap_declined(new, declined)
        new, stats["constants_folded"] = _fold_constant_transposes(new)
        new = _cancel_transpose_pairs(new)
        new = relax.transform.DeadCodeElimination()(new)
        stats["convs_converted"] = todo - _convs_to_convert(new, self.options.data_layout)
        stats["transposes_left"] = max(0, _count(new, _TRANSPOSES) - before)
        stats["transposes_removed"] = max(
            0, 2 * stats["convs_converted"] - stats["transposes_left"]
        )
        if stats["convs_converted"] > 1 and stats["transposes_removed"] == 0:
            # No two converted convs are neighbours (fp32 layers left between int8 kernels):
            # each would pay two transposes and save none.
            return PassResult(mod, False, dict.fromkeys(stats, 0))
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)


def _converts(call: relax.Call) -> bool:
    """Plain and depthwise convs; grouped convs with several channels per group keep their
    layout (the channel-last conv rule vectorizes channels shared by all outputs, or one
    channel per output, not groups)."""
    groups = int(call.attrs.groups)
    if groups == 1:
        return True
    data, out = call.args[0].ty, call.ty
    axis = str(call.attrs.data_layout).index("C")
    out_axis = str(call.attrs.out_layout).index("C")
    if not (isinstance(data, relax.TensorType) and isinstance(out, relax.TensorType)):
        return False
    if data.shape is None or out.shape is None:
        return False
    cin, cout = data.shape[axis], out.shape[out_axis]
    return all(isinstance(c, tirx.IntImm) and int(c) == groups for c in (cin, cout))


def _has_conv(func: relax.Function) -> bool:
    return any(
        isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"
        for call in _tvm.iter_relax_calls(tvm.IRModule({"f": func}))
    )


def _inline_conv_groups(mod: tvm.IRModule) -> tvm.IRModule:
    """`fuse`'s conv groups inlined back into their caller.

    ConvertLayout changes layouts one function at a time: a conv inside a group function
    would get transposes of its own at the group's edges, which never cancel. The legalize
    stage's FuseOps fuses conv + bias + activation again. Other groups (attention, ...) stay.
    A pad kernel a group took in (`fuse` mimics FuseOps there) is folded into the conv that
    reads it, as `fold-pad` does ahead of the layout pass.
    """
    private = {
        gv: func
        for gv, func in mod.functions.items()
        if isinstance(func, relax.Function) and "global_symbol" not in (func.attrs or {})
    }
    keep = {gv: func for gv, func in private.items() if not _has_conv(func)}
    if len(keep) == len(private):
        return mod
    # InlinePrivateFunctions inlines every private function: the others are made public
    # for the while.
    shielded = {gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in keep.items()}
    shielded = tvm.IRModule({**dict(mod.functions), **shielded}, attrs=mod.attrs)
    inlined = relax.transform.InlinePrivateFunctions()(shielded)
    out = {gv: keep.get(gv, func) for gv, func in inlined.functions.items()}
    return tvm.IRModule(out, attrs=inlined.attrs)


def _convs_to_convert(mod: tvm.IRModule, layout: str) -> int:
    return sum(
        1
        for call in _tvm.iter_relax_calls(mod)
        if isinstance(call.op, tvm.ir.Op)
        and call.op.name == "relax.nn.conv2d"
        and str(call.attrs.data_layout) != layout
        and _converts(call)
    )


def _count(mod: tvm.IRModule, names) -> int:
    return sum(
        1
        for call in _tvm.iter_relax_calls(mod)
        if isinstance(call.op, tvm.ir.Op) and call.op.name in names
    )


# --------------------------------------------------------------------------------------------
# Ops the layout conversion declines

_DECLINED_OPS = frozenset(
    f"relax.nn.{name}"
    for name in (
        "conv1d",
        "conv3d",
        "conv1d_transpose",
        "conv2d_transpose",
        "conv3d_transpose",
        "max_pool1d",
        "avg_pool1d",
        "max_pool3d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool3d",
    )
)
_BARRIER = "layout_declined"  # attribute marking the wrapper functions


def _declines(call: relax.Call) -> bool:
    if not isinstance(call.op, tvm.ir.Op) or call.op.name == "relax.call_tir":
        return False
    if call.op.name in _DECLINED_OPS:
        return True
    types = [a.ty for a in call.args] + [call.ty]
    return any(isinstance(t, relax.TensorType) and t.ndim >= 5 for t in types)


@relax.expr_functor.mutator
class _WrapDeclined(relax.PyExprMutator):
    """op(x, W) -> call of a private function `f(x)` (a layout barrier); `calls` keeps the
    original op call of each, to put back once the layouts are decided."""

    def __init__(self, mod: tvm.IRModule, calls: dict) -> None:
        super().__init__(mod)
        self.calls = calls  # barrier name -> (params, original call with params as arguments)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not _declines(call) or any(isinstance(a, (relax.Tuple, relax.Call)) for a in call.args):
            return call  # (a tuple argument would reference the caller's variables)
        args = list(call.args)
        outer = [a for a in args if isinstance(a, relax.Var)]
        params = [relax.Var(v.name, v.ty) for v in outer]
        body = relax.Call(call.op, _substitute(args, outer, params), call.attrs, call.ty_args)
        func = relax.Function(params, body, call.ty).with_attr(_BARRIER, 1)
        name = f"layout_declined_{len(self.calls)}"
        self.calls[name] = (params, body)
        self.count += 1
        return relax.Call(self.builder_.add_func(func, name), outer)


@relax.expr_functor.mutator
class _UnwrapDeclined(relax.PyExprMutator):
    """Barrier calls back to their op, on the (possibly transposed) arguments they now get."""

    def __init__(self, mod: tvm.IRModule, calls: dict) -> None:
        super().__init__(mod)
        self.calls = calls
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.GlobalVar) or call.op.name_hint not in self.calls:
            return call
        params, body = self.calls[call.op.name_hint]
        self.count += 1
        args = _substitute(list(body.args), params, list(call.args))
        return relax.Call(body.op, args, body.attrs, body.ty_args)


def _substitute(args: list, old: list, new: list) -> list:
    """Each argument that is one of `old` replaced by its partner in `new` (by identity)."""
    out = []
    for a in args:
        match = [n for o, n in zip(old, new) if a.same_as(o)]
        out.append(match[0] if match else a)
    return out


def _wrap_declined(mod: tvm.IRModule) -> tuple[tvm.IRModule, int, dict]:
    calls: dict = {}
    new, count = rewrite_relax_functions(mod, lambda m: _WrapDeclined(m, calls))
    return new, count, calls


def _unwrap_declined(mod: tvm.IRModule, calls: dict) -> tvm.IRModule:
    if not calls:
        return mod
    new, _ = rewrite_relax_functions(mod, lambda m: _UnwrapDeclined(m, calls))
    kept = {gv: f for gv, f in new.functions.items() if gv.name_hint not in calls}
    return tvm.IRModule(kept, attrs=new.attrs)


# --------------------------------------------------------------------------------------------
# Folding and cancelling


@relax.expr_functor.mutator
class _FoldWeights(relax.PyExprMutator):
    """permute_dims of a constant -> the transposed constant."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.permute_dims"):
            return call
        arg = call.args[0]
        if isinstance(arg, relax.Var):
            bound = self.lookup_binding(arg)
            arg = arg if bound is None else bound
        if isinstance(arg, tvm.ir.GenericConst):
            data = _tvm.constant_value(arg)
            axes = call.attrs.axes
            axes = None if axes is None else [int(a) for a in axes]
            self.count += 1
            return relax.const(np.ascontiguousarray(np.transpose(data, axes)))
        return call


def _fold_constant_transposes(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    return rewrite_relax_functions(mod, _FoldWeights)


def _axes(call: relax.Call) -> list[int] | None:
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.permute_dims"):
        return None
    axes = call.attrs.axes
    if axes is None:
        return list(range(call.ty.ndim))[::-1]
    return [int(a) for a in axes]


@relax.expr_functor.mutator
class _CancelPairs(relax.PyExprMutator):
    """permute_dims(permute_dims(x, a), b) with a then b the identity -> x."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        outer = _axes(call)
        if outer is None:
            return call
        inner_expr = call.args[0]
        if isinstance(inner_expr, relax.Var):
            bound = self.lookup_binding(inner_expr)
            inner_expr = inner_expr if bound is None else bound
        if not isinstance(inner_expr, relax.Call):
            return call
        inner = _axes(inner_expr)
        if inner is None or len(inner) != len(outer):
            return call
        if [inner[o] for o in outer] != list(range(len(outer))):
            return call
        self.count += 1
        return inner_expr.args[0]


def _cancel_transpose_pairs(mod: tvm.IRModule) -> tvm.IRModule:
    return rewrite_relax_functions(mod, _CancelPairs)[0]
