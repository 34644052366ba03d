"""Lower QDQ conv2d / matmul / add layers to int8 ops with their constants (target-independent).

Matches, in the QDQ form of `passes/quantize.py`:

    xf = dequantize(q, s, zp)            q int8/uint8 (from a quantize or an earlier kernel)
    wf = dequantize(W8, s_w, 0, axis)    W8 an int8 constant, per-channel or per-tensor
    y  = conv2d(xf, wf) | matmul(xf, wf) [+ bias constant] [relu | clip(a, b)]
    [q' = quantize(y, s', zp')]          when y has no other user

and replaces it with one `call_tir` of an int8 op (`graphopt.int8_ops`): the int8 input is
read as is; the constants are the int8 weights (OIHW, or [K, N]), a per-channel int32 `corr`
(the input zero point's correction, plus round(b / (s * s_w)) when requantizing), the
per-channel epilogue scale and the fp32 bias. The epilogue either requantizes straight to q'
(round half to even, relu / clip folded into the clamp range: tensors stay int8 between
consecutive quantized layers) or dequantizes to fp32 when the consumer is fp32. Matmuls whose
activation scale is computed at run time (dynamic quantization) get the runtime scale as an
operand (fp32 output): a scalar, or one scale per row (per-token: a 1-D scale along axis
ndim-2 of x [1.., rows, K], zero points 0).

Residual joins in the QDQ form of `quantize` (`add(dequantize(qa), dequantize(qb))` [relu |
clip], then `quantize`, constant scalar parameters) become one int8 -> int8 add op (exact
fixed-point rescale of both operands, round half to even), so a block reads and writes int8.

The kernels emitted here are the portable reference kernels of the ops (plain scalar TIR,
`_int8_reference.py`), each carrying its recipe (`RECIPE_ATTR`): the graph builds and runs
exactly on any target as it is, and a target stage (`materialize-int8` on CPUs) replaces each
kernel by one for the target's instructions and packs the constants for it.

Layout of the int8 tensors between convs (`layout`, default NCHW): with NHWC the ops work in
NHWC behind the graph's NCHW types (each NHWC op's output is transposed back, and a following
NHWC op takes the op's output instead, so transposes remain only at the edges of an int8
region); a quantized RGB input is then written as 4-channel NHWC by its own op, other window
convs get their input channels padded with the zero point to a multiple of 4, and a global
average pool of an NHWC output pools in NHWC. Grouped convs other than depthwise stay NCHW.
NHWC suits targets whose kernels put channels in SIMD lanes (x86).

Anything else (other layouts, a non-constant weight or zero point, dynamic convs, K too large
for an exact int32 sum) is left as it was and still runs as fake quantization; `stats` counts
both. Zero pads in front of quantized convs are folded into the convs first (`_int8_pad.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.binding_graph import (
    BindingGraph,
    clamp_chain,
    const_value,
    epilogue_chain,
    op_name,
    shape_dims,
    static_dims,
    static_quantize,
)
from graphopt.errors import PipelineError
from graphopt.int8_ops import (
    MAX_K,
    RECIPE_ATTR,
    WORD_CHANNELS,
    AddSpec,
    ConvSpec,
    Epilogue,
    MatmulSpec,
    Recipe,
    add_multipliers,
    epilogue_constants,
    epilogue_for,
    symbolic_rows,
)
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.passes import _int8_reference as ref
from graphopt.passes._int8_pad import fold_pads

_op, _const, _dims = op_name, const_value, static_dims


@register_pass
class LowerInt8(GraphPass):
    """QDQ conv2d/matmul/add -> int8 ops (portable kernels, natural-layout constants)."""

    name = "lower-int8"

    @dataclass(frozen=True)
    class Options:
        # Also lower matmuls with a run-time activation scale (dynamic quantization).
        dynamic: bool = True
        # Per-row dynamic matmuls quantize their fp32 input inside the kernel (one pass over x
        # instead of abs-max, quantize and the matmul's own packing); false: a separate op.
        fuse_row_quant: bool = True
        # Layout of the int8 tensors between conv ops: NCHW (as the graph), or NHWC
        # (channels last; the graph keeps NCHW types and only the edges of an int8 region
        # pay a transpose).
        layout: str = "NCHW"

    def run(self, mod: tvm.IRModule) -> PassResult:
        if self.options.layout not in ("NCHW", "NHWC"):
            raise PipelineError(f"lower-int8: unknown layout '{self.options.layout}' (NCHW, NHWC)")
        nhwc = self.options.layout == "NHWC"
        stats = {"lowered_conv2d": 0, "lowered_matmul": 0, "lowered_dynamic": 0, "lowered_add": 0}
        stats.update(requantized=0, dequantized=0, left=0, pads_folded=0)
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        changed = False
        kernels: dict = {}
        for gvar, func in mod.functions.items():
            if not isinstance(func, relax.Function):
                continue
            func, folded = fold_pads(new, func, BindingGraph(func, new))
            stats["pads_folded"] += folded
            graph = BindingGraph(func, new)
            plans, left = _find(graph, self.options.dynamic, self.options.fuse_row_quant, nhwc)
            stats["left"] += left
            if not plans:
                if folded:
                    new[gvar], changed = func, True
                continue
            _count(stats, plans.values())
            rewriter = _Rewriter(new, plans, kernels, graph)
            rewritten = rewriter.visit_expr(func)
            new = rewriter.builder_.get()
            new[gvar] = rewritten
            changed = True
        if not changed:
            return PassResult(mod, False, stats)
        new = relax.transform.DeadCodeElimination()(new)
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)


def _count(stats: dict, plans) -> None:
    for plan in plans:
        stats[f"lowered_{plan.kind}"] += 1
        stats["lowered_dynamic"] += plan.dynamic
        if plan.kind != "add":
            stats["requantized" if plan.ep.requant else "dequantized"] += 1


# --------------------------------------------------------------------------------------------
# Matching


@dataclass
class _Plan:
    """One matched layer: what replaces the binding of `tail`."""

    kind: str  # conv2d | matmul | add
    tail: relax.Var  # the var whose binding becomes the kernel call
    q: relax.Expr  # the int8 / uint8 input
    xs: relax.Expr | None  # run-time activation scale (dynamic), else None
    recipe: Recipe  # the op (also the kernel's identity: identical layers share a kernel)
    consts: list  # numpy arrays passed after q (and `inputs`)
    ep: Epilogue
    dynamic: bool
    inputs: tuple = ()  # more tensor operands, passed right after q (an add's second operand)
    pad_channels: int = 0  # NHWC input channels appended, holding the zero point
    image: tuple | None = None  # (x fp32 NCHW, scale, zp): q quantizes it (`_image_quantize`)

    @property
    def nhwc(self) -> bool:
        return self.recipe.layout == "NHWC"


def _find(graph: BindingGraph, dynamic: bool, fuse: bool, nhwc: bool) -> tuple[dict, int]:
    plans: dict = {}
    left = 0
    for var in graph.order:
        call = graph.value[var]
        if _op(call) == "relax.add":
            plan = _match_add(graph, var, call, nhwc)
            if plan is not None:
                plans[plan.tail] = plan
            continue
        if _op(call) not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        if _op(graph.resolve(call.args[0])) != "relax.dequantize":
            continue
        plan = _match(graph, var, call, dynamic, fuse, nhwc)
        if plan is None:
            left += 1
        else:
            plans[plan.tail] = plan
    return plans, left


@dataclass
class _Layer:
    """What `_match` found around one conv2d / matmul, before its op is planned."""

    call: relax.Call
    q: relax.Expr
    deq_x: relax.Call
    tail: relax.Var
    w8: np.ndarray
    s_w: np.ndarray  # one scale per output channel
    bias: np.ndarray | None
    ep: Epilogue
    s_x: float | None  # None: a run-time scale
    zp_x: int
    s_out: float | None  # requantize scale


def _match(graph: BindingGraph, var, call, dynamic: bool, fuse: bool, nhwc: bool):
    deq_x = graph.resolve(call.args[0])
    deq_w = graph.resolve(call.args[1])
    if _op(deq_w) != "relax.dequantize" or str(call.ty.dtype) != "float32":
        return None
    q = deq_x.args[0]
    s_x, zp_x = _const(graph.resolve(deq_x.args[1])), _const(graph.resolve(deq_x.args[2]))
    w8, s_w = _const(graph.resolve(deq_w.args[0])), _const(graph.resolve(deq_w.args[1]))
    zp_w = _const(graph.resolve(deq_w.args[2]))
    is_dynamic = s_x is None
    per_row = is_dynamic and _per_row_scale(deq_x, q)
    if per_row and zp_x is not None and not np.any(zp_x):
        zp_x = np.zeros((), zp_x.dtype)  # symmetric per-row: one zero point, 0
    if str(q.ty.dtype) not in ("int8", "uint8") or zp_x is None or zp_x.size != 1:
        return None
    if w8 is None or s_w is None or zp_w is None or w8.dtype != np.int8 or np.any(zp_w != 0):
        return None
    if is_dynamic and (not dynamic or _op(call) != "relax.matmul"):
        return None
    if is_dynamic and not per_row and _dims(deq_x.args[1]) != ():
        return None
    out_shape = shape_dims(call)
    if (s_x is not None and s_x.size != 1) or out_shape is None:
        return None
    kind = "conv2d" if _op(call) == "relax.nn.conv2d" else "matmul"
    channels = out_shape[1] if kind == "conv2d" else out_shape[-1]
    if not isinstance(channels, int):
        return None
    if int(deq_w.attrs.axis) % w8.ndim != (0 if kind == "conv2d" else 1) and s_w.size != 1:
        return None
    s_w = np.broadcast_to(s_w.astype(np.float32).reshape(-1), (channels,))
    tail, bias, lo, hi, requant = epilogue_chain(graph, var, kind, channels, is_dynamic)
    s_x = None if is_dynamic else float(s_x.reshape(()))
    ep, s_out = _epilogue(lo, hi, requant, is_dynamic)
    layer = _Layer(call, q, deq_x, tail, w8, s_w, bias, ep, s_x, int(zp_x.reshape(())), s_out)
    if kind == "conv2d":
        return _conv_plan(graph, layer, nhwc)
    return _matmul_plan(graph, layer, "row" if per_row else is_dynamic, fuse)


def _epilogue(lo: float, hi: float, requant, is_dynamic: bool) -> tuple[Epilogue, float | None]:
    """The epilogue (clamp bounds in the output's domain) and the requantize scale."""
    return epilogue_for(lo, hi, requant, is_dynamic)


def _row_quantize_source(graph: BindingGraph, deq_x, q):
    """(x, eps, qmax) when q = quantize(x, s, 0) with s = maximum(max|x| per row, eps) / qmax,
    as `quantize{mode=dynamic,granularity=row}` emits it: the matmul op can then compute the
    scales and quantize x itself, bit for bit the same. Else None."""
    qc = graph.resolve(q)
    if _op(qc) != "relax.quantize" or str(qc.ty.dtype) != "int8":
        return None
    if not qc.args[1].same_as(deq_x.args[1]):
        return None
    zp = _const(graph.resolve(qc.args[2]))
    div = graph.resolve(qc.args[1])
    if zp is None or np.any(zp) or _op(div) != "relax.divide":
        return None
    qmax, mx = _const(graph.resolve(div.args[1])), graph.resolve(div.args[0])
    if _op(mx) != "relax.maximum":
        return None
    eps, shaped = _const(graph.resolve(mx.args[1])), graph.resolve(mx.args[0])
    red = graph.resolve(shaped.args[0]) if _op(shaped) == "relax.reshape" else None
    if red is None or _op(red) != "relax.max" or red.attrs.keepdims:
        return None
    x = qc.args[0]
    ndim = len(shape_dims(x) or ())
    axes = [int(a) % max(ndim, 1) for a in red.attrs.axis or []]
    absx = graph.resolve(red.args[0])
    if axes != [ndim - 1] or _op(absx) != "relax.abs" or not absx.args[0].same_as(x):
        return None
    if str(x.ty.dtype) != "float32" or qmax is None or eps is None:
        return None
    if qmax.size != 1 or eps.size != 1:
        return None
    return x, float(eps.reshape(())), float(qmax.reshape(()))


def _static_dequantize(graph: BindingGraph, expr):
    """(q, scale, zero point) when `expr` is dequantize(q int8/uint8) with constant scalars."""
    deq = graph.resolve(expr)
    if _op(deq) != "relax.dequantize":
        return None
    q = deq.args[0]
    s, zp = _const(graph.resolve(deq.args[1])), _const(graph.resolve(deq.args[2]))
    ok = s is not None and zp is not None and s.size == 1 and zp.size == 1
    if not ok or str(q.ty.dtype) not in ("int8", "uint8") or float(s.reshape(())) <= 0:
        return None
    return q, float(s.reshape(())), int(zp.reshape(()))


def _match_add(graph: BindingGraph, var, call, nhwc: bool) -> _Plan | None:
    """A join: add of two static dequantizes, [relu | clip], then a static quantize."""
    operands = [_static_dequantize(graph, arg) for arg in call.args]
    shape = shape_dims(call)  # a symbolic batch is a name
    if None in operands or shape is None or str(call.ty.dtype) != "float32":
        return None
    if any(shape_dims(q) != shape for q, _s, _z in operands):
        return None
    tail, lo, hi, nxt = clamp_chain(graph, var, graph.only_user(var), -math.inf, math.inf)
    if nxt is None or _op(graph.value[nxt]) != "relax.quantize":
        return None
    requant = static_quantize(graph, graph.value[nxt])
    if requant is None:
        return None
    ep, _s_o = _epilogue(lo, hi, requant, False)
    (qa, s_a, zp_a), (qb, s_b, zp_b) = operands
    ma, mb, shift = add_multipliers(s_a, s_b, requant[0])
    layout = "NHWC" if nhwc and len(shape) == 4 else "NCHW"
    if layout == "NHWC":  # the same elementwise add over NHWC operands
        shape = (shape[0], shape[2], shape[3], shape[1])
    spec = AddSpec(shape, str(qa.ty.dtype), str(qb.ty.dtype), zp_a, zp_b, ma, mb, shift, ep)
    recipe = Recipe("add", spec, ep=ep, layout=layout)
    return _Plan("add", nxt, qa, None, recipe, [], ep, False, (qb,))


def _per_row_scale(deq_x, q) -> bool:
    """A run-time scale with one value per row of q [1.., rows, K] (axis ndim-2): per-token
    dynamic quantization, which the matmul op applies row by row in its epilogue."""
    x_shape, s_shape = shape_dims(q), shape_dims(deq_x.args[1])
    if x_shape is None or len(x_shape) < 2 or any(d != 1 for d in x_shape[:-2]):
        return False
    axis = int(deq_x.attrs.axis) % len(x_shape)
    return axis == len(x_shape) - 2 and s_shape == (x_shape[-2],)


# --------------------------------------------------------------------------------------------
# Op constants (natural layout)


def _constants(layer: _Layer, w_sum: np.ndarray) -> list[np.ndarray]:
    """Per-channel (corr int32, scale fp32, fbias fp32) of the op's epilogue."""
    return epilogue_constants(
        layer.ep, layer.s_x, layer.zp_x, layer.s_w, layer.bias, w_sum, layer.s_out
    )


def _conv_plan(graph: BindingGraph, layer: _Layer, nhwc: bool) -> _Plan | None:
    attrs, q, w8 = layer.call.attrs, layer.q, layer.w8
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    x_shape = shape_dims(q)
    if layouts != ("NCHW", "OIHW", "NCHW") or x_shape is None or w8.ndim != 4:
        return None
    if not isinstance(x_shape[1], int):  # the channels must be static
        return None
    spec = ConvSpec(
        *x_shape,
        cout=w8.shape[0],
        kh=w8.shape[2],
        kw=w8.shape[3],
        stride=tuple(int(v) for v in attrs.strides),
        padding=tuple(int(v) for v in attrs.padding),
        dilation=tuple(int(v) for v in attrs.dilation),
        groups=int(attrs.groups),
        act_dtype=str(q.ty.dtype),
    )
    if spec.k_group > MAX_K or w8.shape[1] * spec.groups != spec.cin:
        return None
    # NHWC: plain convs and depthwise ones (grouped convs keep NCHW).
    nhwc = nhwc and (spec.groups == 1 or (spec.depthwise and spec.fp32_exact))
    if not nhwc and any(isinstance(d, str) for d in x_shape):  # NCHW kernels: static shapes
        return None
    pad, image = 0, None
    if nhwc and spec.groups == 1 and not spec.pointwise:
        # Window convs: input channels padded to whole 4-byte words (an RGB input: 3 -> 4, by
        # the image quantize op when the input is a quantized fp32 image, else a pad).
        pad = -spec.cin % WORD_CHANNELS
        spec = dataclasses.replace(spec, cin=spec.cin + pad)
        w8 = np.pad(w8, ((0, 0), (0, pad), (0, 0), (0, 0)))
        image = _image_quantize(graph, q) if spec.cin == WORD_CHANNELS else None
    w_sum = w8.reshape(spec.cout, -1).astype(np.int64).sum(axis=1)
    recipe = Recipe("conv2d", spec, layer.zp_x, layer.ep, "NHWC" if nhwc else "NCHW")
    consts = [w8, *_constants(layer, w_sum)]
    return _Plan("conv2d", layer.tail, q, None, recipe, consts, layer.ep, False, (), pad, image)


def _image_quantize(graph: BindingGraph, q):
    """(x, scale, zp) when q = quantize(x) of an fp32 NCHW tensor with constant scalar
    parameters (a model's image input): the `quantize_nhwc` op then makes the NHWC input."""
    call = graph.resolve(q)
    if _op(call) != "relax.quantize":
        return None
    x = call.args[0]
    s, zp = _const(graph.resolve(call.args[1])), _const(graph.resolve(call.args[2]))
    dims = shape_dims(x)
    if s is None or zp is None or s.size != 1 or zp.size != 1 or str(x.ty.dtype) != "float32":
        return None
    if dims is None or len(dims) != 4 or not isinstance(dims[1], int) or dims[1] > WORD_CHANNELS:
        return None
    return x, float(s.reshape(())), int(zp.reshape(()))


def _matmul_plan(graph: BindingGraph, layer: _Layer, dyn, fuse: bool) -> _Plan | None:
    q, w8 = layer.q, layer.w8
    x_shape = shape_dims(q)  # rows may be symbolic (`symbolic_rows`)
    if x_shape is None or len(x_shape) < 2 or w8.ndim != 2 or x_shape[-1] != w8.shape[0]:
        return None
    if w8.shape[0] > MAX_K:
        return None
    rows = symbolic_rows(x_shape)
    fused = _row_quantize_source(graph, layer.deq_x, q) if dyn == "row" and fuse else None
    spec = MatmulSpec(rows, w8.shape[0], w8.shape[1], str(q.ty.dtype), per_row=dyn == "row")
    if fused is not None:  # the op quantizes its own fp32 rows
        spec = dataclasses.replace(spec, fused_quant=True, eps=fused[1], qmax=fused[2])
    consts = [w8, *_constants(layer, w8.astype(np.int64).sum(axis=0))]
    xs = layer.deq_x.args[1] if dyn and fused is None else None
    if xs is None:
        consts.append(np.array(1.0, np.float32))
    recipe = Recipe("matmul", spec, layer.zp_x, layer.ep, x_shape=x_shape)
    source = q if fused is None else fused[0]
    return _Plan("matmul", layer.tail, source, xs, recipe, consts, layer.ep, bool(dyn))


def _reference_kernel(recipe: Recipe) -> tvm.tirx.PrimFunc:
    """The portable kernel of an op, carrying its recipe."""
    if recipe.kind == "conv2d":
        func = ref.conv2d_reference(recipe.spec, recipe.layout, recipe.zp, recipe.ep)
    elif recipe.kind == "matmul":
        func = ref.matmul_reference(recipe.spec, recipe.x_shape, recipe.ep)
    elif recipe.kind == "add":
        func = ref.add_reference(recipe.spec)
    else:
        func = ref.quantize_nhwc_reference(recipe.spec, recipe.zp, recipe.out_dtype)
    # TVMScript names every kernel after its Python function: drop that symbol so the
    # module's unique GlobalVar name becomes the exported one.
    return func.without_attr("global_symbol").with_attr(RECIPE_ATTR, recipe.text())


# --------------------------------------------------------------------------------------------
# Rewriting


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces each plan's tail binding by the op's call (the rest dies in DCE)."""

    def __init__(self, mod: tvm.IRModule, plans: dict, kernels: dict, graph: BindingGraph) -> None:
        super().__init__(mod)
        self.graph = graph
        self.plans = plans
        self.kernels = kernels  # recipe text -> GlobalVar, shared by identical layers
        self.nhwc_of: dict = {}  # NCHW var -> the NHWC op output it transposes

    def _kernel(self, recipe: Recipe) -> tvm.ir.GlobalVar:
        key = recipe.text()
        if key not in self.kernels:
            name = "quantize_nhwc" if recipe.kind == "quantize_nhwc" else f"int8_{recipe.kind}"
            self.kernels[key] = self.builder_.add_func(_reference_kernel(recipe), name)
        return self.kernels[key]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = self.plans.get(binding.var)
        if plan is None:
            pooled = self._pool_nhwc(binding)
            if pooled is None:
                super().visit_var_binding_(binding)
            else:
                self.builder_.emit_normalized(relax.VarBinding(binding.var, pooled))
            return
        args = self._operands(plan)
        ty = binding.var.ty
        if not plan.nhwc:
            call = relax.call_tir(
                self._kernel(plan.recipe), args, relax.TensorType(ty.shape, ty.dtype)
            )
            self.builder_.emit_normalized(
                relax.VarBinding(binding.var, self.builder_.normalize(call))
            )
            return
        n, c, h, w = binding.var.ty.shape.values  # n may be symbolic
        out_ty = relax.TensorType(relax.ShapeExpr([n, h, w, c]), ty.dtype)
        out = self.builder_.emit(relax.call_tir(self._kernel(plan.recipe), args, out_ty))
        back = self.builder_.normalize(relax.op.permute_dims(out, [0, 3, 1, 2]))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, back))
        self.nhwc_of[binding.var] = out

    def _operands(self, plan: _Plan) -> list:
        """The op's call arguments: inputs (NHWC where the op is), constants, run-time scale."""
        args = [self.visit_expr(plan.q), *(self.visit_expr(x) for x in plan.inputs)]
        if plan.image is not None:
            args[0] = self._quantize_image(plan)
        elif plan.nhwc:
            args = [self._nhwc(a) for a in args]
        if plan.pad_channels and plan.image is None:
            pad = [0] * 7 + [plan.pad_channels]
            padded = relax.op.nn.pad(args[0], pad, pad_value=float(plan.recipe.zp))
            args[0] = self.builder_.emit(padded)
        args += [relax.const(c) for c in plan.consts]
        if plan.xs is not None:
            args.append(self.visit_expr(plan.xs))
        return args

    def _quantize_image(self, plan: _Plan):
        x, scale, zp = plan.image
        dims = shape_dims(x)
        dtype = str(plan.q.ty.dtype)
        recipe = Recipe("quantize_nhwc", dims, zp, layout="NHWC", out_dtype=dtype)
        n, _c, h, w = x.ty.shape.values
        out_ty = relax.TensorType(relax.ShapeExpr([n, h, w, WORD_CHANNELS]), dtype)
        args = [self.visit_expr(x), relax.const(np.array(scale, np.float32))]
        return self.builder_.emit(relax.call_tir(self._kernel(recipe), args, out_ty))

    def _pool_nhwc(self, binding: relax.VarBinding):
        """A global average pool of an NHWC op's output, pooled in NHWC (the transpose back
        to NCHW would cost more than the pool): mean(y, axis=[2, 3]) with y the op's fp32
        output or dequantize(y) with scalar parameters -> reshape(mean(.., axis=[1, 2])).
        Else None."""
        call = binding.value
        if _op(call) != "relax.mean" or not isinstance(call.args[0], relax.Var):
            return None
        if sorted(int(a) % 4 for a in (call.attrs.axis or [])) != [2, 3]:
            return None
        source = call.args[0]
        deq = self.graph.value.get(source)
        if source in self.nhwc_of:
            real = self.nhwc_of[source]
        elif _op(deq) == "relax.dequantize" and deq.args[0] in self.nhwc_of:
            scalars = [_const(self.graph.resolve(a)) for a in deq.args[1:]]
            if any(v is None or v.size != 1 for v in scalars):
                return None
            s, zp = (self.visit_expr(a) for a in deq.args[1:])
            x = self.nhwc_of[deq.args[0]]
            real = self.builder_.emit(relax.op.dequantize(x, s, zp, -1, str(deq.ty.dtype)))
        else:
            return None
        mean = relax.op.mean(real, [1, 2], bool(call.attrs.keepdims))
        shape = call.ty.shape  # the mean's shape, symbolic batch included
        return self.builder_.normalize(relax.op.reshape(self.builder_.emit(mean), shape))

    def _nhwc(self, expr):
        """expr (NCHW) as NHWC: the op output it came from, else a transpose."""
        if expr in self.nhwc_of:
            return self.nhwc_of[expr]
        return self.builder_.emit(relax.op.permute_dims(expr, [0, 2, 3, 1]))
