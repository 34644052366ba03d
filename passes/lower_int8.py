"""Lower QDQ conv2d / matmul layers to integer kernels (int8 x int8 -> int32, fused epilogue).

Matches, in the QDQ form of `passes/quantize.py`:

    xf = dequantize(q, s, zp)            q int8/uint8 (from a quantize or an earlier kernel)
    wf = dequantize(W8, s_w, 0, axis)    W8 an int8 constant, per-channel or per-tensor
    y  = conv2d(xf, wf) | matmul(xf, wf) [+ bias constant] [relu | clip(a, b)]
    [q' = quantize(y, s', zp')]          when y has no other user

and replaces it with one `call_tir` of an integer kernel (`targets/cpu/int8/`): the int8 input is
read as is, weights are packed for the target's dot instruction at compile time, bias becomes
int32 (round(b / (s * s_w))), zero points are folded into a per-channel int32 correction, and
the epilogue either requantizes straight to q' (round half to even, relu / clip folded into the
clamp range: tensors stay int8 between consecutive quantized layers) or dequantizes to fp32
when the consumer is fp32. Matmuls whose activation scale is computed at run time (dynamic
quantization) get the runtime scale as a kernel argument (fp32 output): a scalar, or one scale
per row (per-token: a 1-D scale along axis ndim-2 of x [1.., rows, K], zero points 0).

Residual joins in the QDQ form of `quantize` (`add(dequantize(qa), dequantize(qb))` [relu |
clip], then `quantize`, constant scalar parameters) become one int8 -> int8 kernel (exact
fixed-point rescale of both operands, round half to even), so a block reads and writes int8.

Layouts (`layout`, default `auto`): on x86 the kernels work in NHWC behind the graph's NCHW
types (each NHWC kernel's output is transposed back, and a following NHWC kernel takes the
kernel output instead, so transposes remain only at the edges of an int8 region): a 1x1 conv
is the int8 matmul over pixels, other convs the matmul over their windows, depthwise convs a
channel-last kernel, a quantized RGB input is written as NHWC words by its own kernel, and a
global average pool of an NHWC output pools in NHWC. Elsewhere (ARM) the NCHW kernels run.

Anything else (other layouts, a non-constant weight or zero point, dynamic convs, K too large
for an exact int32 sum) is left as it was and still runs as fake quantization; `stats` counts
both. The instruction set comes from `isa` (`auto`: the current target, else this host), so
the pass belongs after `quantize` in a flow compiled for that target. Kernels carry their recipe:
when the graph passes run without the target (so the host's scheme was used), `schedule-cpu`
rebuilds them for the target's scheme (`targets/cpu/int8/retarget.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from graphopt import _tvm
from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.passes._int8_pad import fold_pads
from graphopt.targets.cpu.int8 import conv_nchw as CN
from graphopt.targets.cpu.int8 import depthwise_nhwc as DW
from graphopt.targets.cpu.int8 import kernels as K
from graphopt.targets.cpu.int8 import quantize_nhwc as QN
from graphopt.targets.cpu.int8.retarget import RECIPE_ATTR, recipe

# Largest reduction whose int32 sum cannot overflow: 255 * 128 per product.
MAX_K = (2**31 - 1) // (255 * 128)


@register_pass
class LowerInt8(GraphPass):
    """QDQ conv2d/matmul -> integer kernels with int32 bias and a fused requantize epilogue."""

    name = "lower-int8"

    @dataclass(frozen=True)
    class Options:
        # Dot-product scheme: auto | vnni | avx2 | sdot | generic.
        isa: str = "auto"
        # Also lower matmuls with a run-time activation scale (dynamic quantization).
        dynamic: bool = True
        # Per-row dynamic matmuls quantize their fp32 input inside the kernel (one pass over x
        # instead of abs-max, quantize and the matmul's own packing); false: a separate kernel.
        fuse_row_quant: bool = True
        # Layout of the int8 tensors between conv kernels: NHWC (channels in SIMD lanes: a 1x1
        # conv is the int8 matmul, a depthwise conv one vector FMA per tap), NCHW, or auto
        # (NHWC for the x86 schemes, NCHW elsewhere). The graph keeps NCHW types: an NHWC
        # kernel's input and output are transposed, and consecutive NHWC kernels skip the
        # transposes between them, so only the edges of an int8 region pay one.
        layout: str = "auto"

    def run(self, mod: tvm.IRModule) -> PassResult:
        isa = _resolve_isa(self.options.isa)
        nhwc = _resolve_layout(self.options.layout, isa) == "NHWC"
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
            plans, left = _find(
                func, new, isa, self.options.dynamic, self.options.fuse_row_quant, nhwc
            )
            stats["left"] += left
            if not plans:
                if folded:
                    new[gvar], changed = func, True
                continue
            for plan in plans.values():
                stats[f"lowered_{plan.kind}"] += 1
                stats["lowered_dynamic"] += plan.dynamic
                if plan.kind != "add":
                    stats["requantized" if plan.ep.requant else "dequantized"] += 1
            rewriter = _Rewriter(new, plans, kernels, BindingGraph(func, new))
            rewritten = rewriter.visit_expr(func)
            new = rewriter.builder_.get()
            new[gvar] = rewritten
            changed = True
        if not changed:
            return PassResult(mod, False, stats)
        new = relax.transform.DeadCodeElimination()(new)
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)


def _resolve_layout(name: str, isa: K.Isa) -> str:
    if name == "auto":
        return "NHWC" if isa.name in ("vnni", "avx2") else "NCHW"
    if name not in ("NCHW", "NHWC"):
        raise PipelineError(f"lower-int8: unknown layout '{name}' (auto, NCHW, NHWC)")
    return name


def _resolve_isa(name: str) -> K.Isa:
    if name == "auto":
        target = tvm.target.Target.current(allow_none=True)
        if target is None or target.kind.name != "llvm":
            target = _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
        return K.isa_for_target(target)
    if name not in K.ISAS:
        raise PipelineError(f"lower-int8: unknown isa '{name}' (auto, {', '.join(K.ISAS)})")
    return K.ISAS[name]


# --------------------------------------------------------------------------------------------
# Matching


@dataclass
class _Plan:
    """One matched layer: what replaces the binding of `tail`."""

    kind: str  # conv2d | matmul
    tail: relax.Var  # the var whose binding becomes the kernel call
    q: relax.Expr  # the int8 / uint8 input
    xs: relax.Expr | None  # run-time activation scale (dynamic), else None
    key: tuple  # kernel identity (shape, plan, epilogue)
    make: object  # () -> PrimFunc
    consts: list  # numpy arrays passed after q
    ep: K.Epilogue
    dynamic: bool
    recipe: str = ""  # how schedule-cpu rebuilds the kernel for another target
    inputs: tuple = ()  # more tensor operands, passed right after q (an add's second operand)
    nhwc: bool = False  # the kernel reads and writes NHWC (the graph's tensors are NCHW)
    pad_channels: int = 0  # NHWC input channels appended first, holding the zero point zp
    zp: int = 0
    image: tuple | None = None  # (x fp32 NCHW, scale, zp): q quantizes it (`_image_quantize`)


def _op(expr) -> str:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else ""


def _const(expr) -> np.ndarray | None:
    return _tvm.constant_value(expr) if isinstance(expr, tvm.ir.GenericConst) else None


def _dims(expr) -> tuple[int, ...] | None:
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return tuple(int(v) for v in values)


class BindingGraph:
    """Bindings and use counts of one function (what the matcher walks)."""

    def __init__(self, func: relax.Function, mod: tvm.IRModule) -> None:
        self.mod = mod
        self.value: dict = {}
        self.users: dict = {}
        self.order: list = []
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.value[binding.var] = binding.value
                    self.order.append(binding.var)
                    self._use(binding.value, binding.var)
        self._use(func.body.body, None)

    def _use(self, expr, user) -> None:
        if isinstance(expr, relax.Var):
            self.users.setdefault(expr, []).append(user)
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                self._use(arg, user)
        elif isinstance(expr, relax.Tuple):
            for field in expr.fields:
                self._use(field, user)
        elif isinstance(expr, relax.TupleGetItem):
            self._use(expr.tuple_value, user)

    def resolve(self, expr):
        """The call or constant behind an expression (through var bindings)."""
        while isinstance(expr, relax.Var) and expr in self.value:
            expr = self.value[expr]
        return expr

    def only_user(self, var) -> relax.Var | None:
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 and users[0] is not None else None


def _find(
    func, mod, isa: K.Isa, dynamic: bool, fuse: bool = True, nhwc: bool = False
) -> tuple[dict, int]:
    graph = BindingGraph(func, mod)
    plans: dict = {}
    left = 0
    for var in graph.order:
        call = graph.value[var]
        if _op(call) == "relax.add":
            plan = _match_add(graph, var, call)
            if plan is not None:
                if nhwc and len(plan.key[1].shape) == 4:
                    plan = _add_nhwc(plan)
                plans[plan.tail] = plan
            continue
        if _op(call) not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        if _op(graph.resolve(call.args[0])) != "relax.dequantize":
            continue
        plan = _match(graph, var, call, isa, dynamic, fuse, nhwc)
        if plan is None:
            left += 1
        else:
            plans[plan.tail] = plan
    return plans, left


def _match(
    graph: BindingGraph, var, call, isa: K.Isa, dynamic: bool, fuse: bool = True, nhwc=False
) -> _Plan | None:
    deq_x = graph.resolve(call.args[0])
    deq_w = graph.resolve(call.args[1])
    if _op(deq_w) != "relax.dequantize" or str(call.ty.dtype) != "float32":
        return None
    q = deq_x.args[0]
    act_dtype = str(q.ty.dtype)
    s_x, zp_x = _const(graph.resolve(deq_x.args[1])), _const(graph.resolve(deq_x.args[2]))
    w8, s_w = _const(graph.resolve(deq_w.args[0])), _const(graph.resolve(deq_w.args[1]))
    zp_w = _const(graph.resolve(deq_w.args[2]))
    is_dynamic = s_x is None
    per_row = is_dynamic and _per_row_scale(deq_x, q)
    if per_row and zp_x is not None and not np.any(zp_x):
        zp_x = np.zeros((), zp_x.dtype)  # symmetric per-row: one zero point, 0
    if act_dtype not in ("int8", "uint8") or zp_x is None or zp_x.size != 1:
        return None
    if w8 is None or s_w is None or zp_w is None or w8.dtype != np.int8 or np.any(zp_w != 0):
        return None
    if is_dynamic and (not dynamic or _op(call) != "relax.matmul"):
        return None
    if is_dynamic and not per_row and _dims(deq_x.args[1]) != ():
        return None
    if s_x is not None and s_x.size != 1:
        return None
    out_shape = _dims(call)
    if out_shape is None:
        return None
    kind = "conv2d" if _op(call) == "relax.nn.conv2d" else "matmul"
    channels = out_shape[1] if kind == "conv2d" else out_shape[-1]
    w_axis = 0 if kind == "conv2d" else 1
    if int(deq_w.attrs.axis) % w8.ndim != w_axis and s_w.size != 1:
        return None
    s_w = np.broadcast_to(s_w.astype(np.float32).reshape(-1), (channels,))
    tail, bias, lo, hi, requant = epilogue_chain(graph, var, kind, channels, is_dynamic)
    ep_args = dict(s_x=None if is_dynamic else float(s_x.reshape(())), zp_x=int(zp_x.reshape(())))
    if requant is not None:
        s_o, zp_o, out_dtype = requant
        lo_q = max(-math.inf, round(lo / s_o) + zp_o) if lo > -math.inf else -math.inf
        hi_q = min(math.inf, round(hi / s_o) + zp_o) if hi < math.inf else math.inf
        ep = K.Epilogue(out_dtype, zp=zp_o, lo=lo_q, hi=hi_q)
        ep_args.update(s_out=s_o)
    else:
        ep = K.Epilogue("float32", lo=lo, hi=hi, dynamic=is_dynamic)
    if kind == "conv2d":
        return _conv_plan(graph, call, q, tail, w8, s_w, bias, ep, ep_args, isa, nhwc)
    dyn = "row" if per_row else is_dynamic
    return _matmul_plan(graph, call, q, deq_x, tail, w8, s_w, bias, ep, ep_args, isa, dyn, fuse)


def _row_quantize_source(graph: BindingGraph, deq_x, q):
    """(x, eps, qmax) when q = quantize(x, s, 0) with s = maximum(max|x| per row, eps) / qmax,
    as `quantize{mode=dynamic,granularity=row}` emits it: the matmul kernel can then compute
    the scales and quantize x itself, bit for bit the same. Else None."""
    qc = graph.resolve(q)
    if (
        _op(qc) != "relax.quantize"
        or str(qc.ty.dtype) != "int8"
        or not _same(qc.args[1], deq_x.args[1])
    ):
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
    ndim = len(_dims(x) or ())
    axes = [int(a) % max(ndim, 1) for a in red.attrs.axis or []]
    absx = graph.resolve(red.args[0])
    if axes != [ndim - 1] or _op(absx) != "relax.abs" or not _same(absx.args[0], x):
        return None
    if (
        str(x.ty.dtype) != "float32"
        or qmax is None
        or eps is None
        or qmax.size != 1
        or eps.size != 1
    ):
        return None
    return x, float(eps.reshape(())), float(qmax.reshape(()))


def _same(a, b) -> bool:
    return a.same_as(b)


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


def _match_add(graph: BindingGraph, var, call) -> _Plan | None:
    """A join: add of two static dequantizes, [relu | clip], then a static quantize."""
    operands = [_static_dequantize(graph, arg) for arg in call.args]
    shape = _dims(call)
    if None in operands or shape is None or str(call.ty.dtype) != "float32":
        return None
    if any(_dims(q) != shape for q, _s, _z in operands):
        return None
    tail, lo, hi = var, -math.inf, math.inf
    nxt = graph.only_user(tail)
    tail, lo, hi, nxt = _clamp_chain(graph, tail, nxt, lo, hi)
    if nxt is None or _op(graph.value[nxt]) != "relax.quantize":
        return None
    quant = graph.value[nxt]
    s_o, zp_o = _const(graph.resolve(quant.args[1])), _const(graph.resolve(quant.args[2]))
    out_dtype = str(quant.attrs.out_dtype)
    if s_o is None or zp_o is None or s_o.size != 1 or zp_o.size != 1:
        return None
    s_o, zp_o = float(s_o.reshape(())), int(zp_o.reshape(()))
    if out_dtype not in ("int8", "uint8") or s_o <= 0:
        return None
    lo_q = round(lo / s_o) + zp_o if lo > -math.inf else -math.inf
    hi_q = round(hi / s_o) + zp_o if hi < math.inf else math.inf
    ep = K.Epilogue(out_dtype, zp=zp_o, lo=lo_q, hi=hi_q)
    (qa, s_a, zp_a), (qb, s_b, zp_b) = operands
    ma, mb, shift = K.add_multipliers(s_a, s_b, s_o)
    spec = K.AddSpec(shape, str(qa.ty.dtype), str(qb.ty.dtype), zp_a, zp_b, ma, mb, shift, ep)
    how = json.dumps({"kind": "add", "isa": "any", "spec": dataclasses.asdict(spec)})
    make = lambda: K.add_kernel(spec)  # noqa: E731
    return _Plan("add", nxt, qa, None, ("add", spec), make, [], ep, False, how, (qb,))


def _per_row_scale(deq_x, q) -> bool:
    """A run-time scale with one value per row of q [1.., rows, K] (axis ndim-2): per-token
    dynamic quantization, which the matmul kernel applies row by row in its epilogue."""
    x_shape, s_shape = _dims(q), _dims(deq_x.args[1])
    if x_shape is None or len(x_shape) < 2 or any(d != 1 for d in x_shape[:-2]):
        return False
    axis = int(deq_x.attrs.axis) % len(x_shape)
    return axis == len(x_shape) - 2 and s_shape == (x_shape[-2],)


def epilogue_chain(graph: BindingGraph, var, kind: str, channels: int, is_dynamic: bool):
    """Follow bias add, relu / clip and a final quantize through single-use bindings."""
    tail, bias, lo, hi, requant = var, None, -math.inf, math.inf, None
    nxt = graph.only_user(tail)
    if nxt is not None and _op(graph.value[nxt]) == "relax.add":
        add = graph.value[nxt]
        other = add.args[1] if add.args[0].same_as(tail) else add.args[0]
        b = _const(graph.resolve(other))
        b = _channel_vector(b, kind, channels, len(_dims(add) or ()))
        if b is not None and _dims(add) == _dims(graph.value[var]):
            tail, bias = nxt, b
            nxt = graph.only_user(tail)
    tail, lo, hi, nxt = _clamp_chain(graph, tail, nxt, lo, hi)
    if nxt is not None and not is_dynamic and _op(graph.value[nxt]) == "relax.quantize":
        quant = graph.value[nxt]
        s_o, zp_o = _const(graph.resolve(quant.args[1])), _const(graph.resolve(quant.args[2]))
        out_dtype = str(quant.attrs.out_dtype)
        if (
            s_o is not None
            and zp_o is not None
            and s_o.size == 1
            and zp_o.size == 1
            and out_dtype in ("int8", "uint8")
            and float(s_o.reshape(())) > 0
        ):
            tail = nxt
            requant = (float(s_o.reshape(())), int(zp_o.reshape(())), out_dtype)
    return tail, bias, lo, hi, requant


def _clamp_chain(graph: BindingGraph, tail, nxt, lo: float, hi: float):
    """Follow relu / clip / max / min users of `tail` while their bounds still intersect
    [lo, hi]; returns the last clamp, the bounds and its only user (or None)."""
    while nxt is not None:
        bound = _clamp(graph, nxt, tail)
        if bound is None or max(lo, bound[0]) > min(hi, bound[1]):
            break
        tail, lo, hi = nxt, max(lo, bound[0]), min(hi, bound[1])
        nxt = graph.only_user(tail)
    return tail, lo, hi, nxt


def _clamp(graph: BindingGraph, var, data) -> tuple[float, float] | None:
    """(lo, hi) when `var` clamps `data` by constants: relu, clip, maximum / minimum with a
    scalar (as a Relax op, or a call_tir of a one-block max / min kernel: how the ONNX importer
    brings in Clip)."""
    call = graph.value[var]
    op = _op(call)
    if op == "relax.nn.relu" and call.args[0].same_as(data):
        return 0.0, math.inf
    if op == "relax.clip" and call.args[0].same_as(data):
        lo, hi = _prim_float(call.args[1]), _prim_float(call.args[2])
        return None if lo is None or hi is None else (lo, hi)
    if op in ("relax.maximum", "relax.minimum"):
        kind, args = op[len("relax.") : len("relax.") + 3], list(call.args)
    elif op == "relax.call_tir" and isinstance(call.args[1], relax.Tuple):
        kind, args = _minmax_kernel(graph.mod[call.args[0]]), list(call.args[1].fields)
    else:
        return None
    if kind is None or len(args) != 2 or not args[0].same_as(data):
        return None
    c = _const(graph.resolve(args[1]))
    if c is None or c.size != 1:
        return None
    c = float(c.reshape(()))
    return (c, math.inf) if kind == "max" else (-math.inf, c)


def _minmax_kernel(func) -> str | None:
    """'max' / 'min' when a PrimFunc is out[i..] = max|min(a[i..], b[]) in a single block."""
    if not isinstance(func, tvm.tirx.PrimFunc) or len(func.params) != 3:
        return None
    try:
        sch = tvm.s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - any other shape of function is simply not a match
        return None
    if len(blocks) != 1:
        return None
    store = sch.get(blocks[0]).body
    if not isinstance(store, tvm.tirx.BufferStore):
        return None
    value = store.value
    kind = "max" if isinstance(value, tvm.tirx.Max) else "min"
    if not isinstance(value, (tvm.tirx.Max, tvm.tirx.Min)):
        return None
    a, b = func.params[:2]  # 0.27: a load's source is the parameter itself
    first, second = value.a, value.b
    loads = all(isinstance(e, tvm.ir.TensorLoad) for e in (first, second))
    if not loads or not first.source.same_as(a) or not second.source.same_as(b):
        return None
    same_index = len(first.indices) == len(store.indices) and all(
        i.same_as(j) for i, j in zip(first.indices, store.indices)
    )
    return kind if same_index and len(second.indices) == 0 else None


def _prim_float(expr) -> float | None:
    """A clip bound: an immediate (possibly wrapped in a PrimValue) or a scalar constant."""
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)):
        return float(value)
    if value is not None and isinstance(getattr(value, "value", None), (int, float)):
        return float(value.value)
    const = _const(expr)
    return float(const.reshape(())) if const is not None and const.size == 1 else None


def _channel_vector(b, kind: str, channels: int, ndim: int) -> np.ndarray | None:
    """A bias constant as one value per output channel, or None if it varies otherwise."""
    if b is None or b.ndim > ndim or b.dtype != np.float32:
        return None
    shape = (1,) * (ndim - b.ndim) + b.shape
    axis = 1 if kind == "conv2d" else ndim - 1
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(b.reshape(-1), (channels,)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Kernel constants


def _epilogue_constants(w_sum, s_w, bias, ep: K.Epilogue, ep_args: dict, off: int):
    """Per-channel (corr int32, scale fp32, fbias fp32) for the kernel's epilogue."""
    s_x, zp_x = ep_args["s_x"], ep_args["zp_x"]
    corr = -(zp_x + off) * w_sum.astype(np.int64)
    bias = np.zeros_like(s_w) if bias is None else bias
    if ep.requant:
        real = np.float64(s_x) * s_w.astype(np.float64)
        corr = corr + np.round(bias.astype(np.float64) / real).astype(np.int64)
        scale = (real / ep_args["s_out"]).astype(np.float32)
        fbias = np.zeros_like(s_w)
    elif ep.dynamic:
        scale, fbias = s_w.astype(np.float32), bias
    else:
        scale = (np.float32(s_x) * s_w).astype(np.float32)
        fbias = bias
    corr = np.clip(corr, -(2**31), 2**31 - 1).astype(np.int32)
    return corr, scale, fbias.astype(np.float32)


def _pad(values: np.ndarray, length: int, groups: int = 1) -> np.ndarray:
    """Per-channel values padded per group to `length` (rows the kernel computes but drops)."""
    per = values.reshape(groups, -1)
    out = np.zeros((groups, length), values.dtype)
    out[:, : per.shape[1]] = per
    return out.reshape(-1)


def _conv_plan(graph, call, q, tail, w8, s_w, bias, ep, ep_args, isa, nhwc) -> _Plan | None:
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    x_shape = _dims(q)
    if layouts != ("NCHW", "OIHW", "NCHW") or x_shape is None or w8.ndim != 4:
        return None
    groups = int(attrs.groups)
    spec = K.ConvSpec(
        *x_shape,
        cout=w8.shape[0],
        kh=w8.shape[2],
        kw=w8.shape[3],
        stride=tuple(int(v) for v in attrs.strides),
        padding=tuple(int(v) for v in attrs.padding),
        dilation=tuple(int(v) for v in attrs.dilation),
        groups=groups,
        act_dtype=str(q.ty.dtype),
    )
    if spec.k_group > MAX_K or w8.shape[1] * groups != spec.cin:
        return None
    zp = ep_args["zp_x"]
    w_sum = w8.reshape(w8.shape[0], -1).astype(np.int64).sum(axis=1)
    if nhwc:
        plan = _conv_nhwc_plan(graph, q, tail, spec, w8, w_sum, s_w, bias, ep, ep_args, isa)
        if plan is not None:
            return plan
    if spec.depthwise and spec.kh * spec.kw * 255 * 128 < 2**24:
        # The depthwise kernel subtracts the zero point itself: no correction term.
        corr, scale, fbias = _epilogue_constants(w_sum, s_w, bias, ep, ep_args, -zp)
        consts = [w8.reshape(spec.cout, -1).astype(np.int8), corr, scale, fbias]
        key = ("depthwise", spec, isa, zp, ep)
        make = lambda: CN.depthwise_kernel(spec, isa, zp, ep)  # noqa: E731
        how = recipe("depthwise", spec, isa, zp, ep)
        return _Plan("conv2d", tail, q, None, key, make, consts, ep, False, how)
    plan = CN.conv_plan(spec, isa)
    corr, scale, fbias = _epilogue_constants(
        w_sum, s_w, bias, ep, ep_args, isa.offset(spec.act_dtype)
    )
    consts = [CN.pack_conv_weight(w8, spec, plan)]
    consts += [_pad(a, plan.og_pad, groups) for a in (corr, scale, fbias)]
    key = ("conv2d", spec, plan, zp, ep)
    make = lambda: CN.conv2d_kernel(spec, plan, zp, ep)  # noqa: E731
    how = recipe("conv2d", spec, isa, zp, ep)
    return _Plan("conv2d", tail, q, None, key, make, consts, ep, False, how)


def _conv_nhwc_plan(graph, q, tail, spec, w8, w_sum, s_w, bias, ep, ep_args, isa) -> _Plan | None:
    """The NHWC kernel of a conv: channel-last depthwise, or the int8 matmul (1x1 convs) or
    the matmul over windows (others); None for grouped convs (they keep the NCHW kernel)."""
    zp = ep_args["zp_x"]
    if spec.depthwise and spec.kh * spec.kw * 255 * 128 < 2**24:
        cp = DW.channel_pad(spec.cout, isa)
        corr, scale, fbias = _epilogue_constants(w_sum, s_w, bias, ep, ep_args, -zp)
        taps = w8.reshape(spec.cout, -1).T  # [KH*KW, C]: one vector of channels per tap
        weights = np.zeros((taps.shape[0], cp), np.int8)
        weights[:, : spec.cout] = taps
        consts = [weights, *(_pad(a, cp) for a in (corr, scale, fbias))]
        key = ("depthwise_nhwc", spec, isa, zp, ep)
        make = lambda: DW.depthwise_nhwc_kernel(spec, isa, zp, ep)  # noqa: E731
        how = recipe("depthwise_nhwc", spec, isa, zp, ep)
        return _Plan("conv2d", tail, q, None, key, make, consts, ep, False, how, nhwc=True)
    if spec.groups != 1:
        return None  # grouped convs keep the NCHW kernel
    n, cin, h, w = spec.batch, spec.cin, spec.height, spec.width
    x_shape = (n, h, w, cin)
    off = isa.offset(spec.act_dtype)
    corr, scale, fbias = _epilogue_constants(w_sum, s_w, bias, ep, ep_args, off)
    pointwise = (spec.kh, spec.kw, spec.stride, spec.padding) == (1, 1, (1, 1), (0, 0, 0, 0))
    if pointwise:
        # A 1x1 conv over NHWC is the matmul [N*H*W, C_in] x [C_in, C_out].
        mspec = K.MatmulSpec(n * h * w, cin, spec.cout, spec.act_dtype)
        plan = K.matmul_plan(mspec, isa)
        weights = K.pack_matmul_weight(w8.reshape(spec.cout, cin).T, plan)
        key = ("matmul", mspec, plan, x_shape, ep)
        make = lambda: K.matmul_kernel(mspec, plan, x_shape, zp, ep)  # noqa: E731
        how = recipe("matmul", mspec, isa, zp, ep, x_shape)
    else:
        # Any other conv: the same matmul over its windows ([output pixels, KH*KW*C_in]),
        # packed from NHWC by each task (no im2col of the whole input). Channels are padded
        # to whole words first (an RGB input: 3 -> 4, by the image quantize kernel when the
        # input is a quantized fp32 image, else a pad op), so each tap's words are loads.
        pad_channels = K.window_words(cin, isa) * isa.kpack - cin
        spec = dataclasses.replace(spec, cin=cin + pad_channels)
        x_shape = (n, h, w, spec.cin)
        w8 = np.pad(w8, ((0, 0), (0, pad_channels), (0, 0), (0, 0)))
        oh, ow = spec.out_hw
        k = spec.kh * spec.kw * spec.cin
        mspec = K.MatmulSpec(n * oh * ow, k, spec.cout, spec.act_dtype)
        plan = K.matmul_plan(mspec, isa)
        weights = K.pack_window_weight(w8, plan)
        key = ("window", spec, plan, zp, ep)
        make = lambda: K.matmul_kernel(mspec, plan, x_shape, zp, ep, window=spec)  # noqa: E731
        how = recipe("window", spec, isa, zp, ep)
    consts = [weights, *(_pad(a, plan.n_pad) for a in (corr, scale, fbias))]
    consts.append(np.array(1.0, np.float32))  # no run-time scale
    layer = _Plan("conv2d", tail, q, None, key, make, consts, ep, False, how, nhwc=True)
    if pointwise:
        return layer
    source = _image_quantize(graph, q) if spec.cin == QN.CHANNELS else None
    return dataclasses.replace(layer, pad_channels=pad_channels, zp=zp, image=source)


def _image_quantize(graph: BindingGraph, q):
    """(x, scale, zp) when q = quantize(x) of an fp32 NCHW tensor with constant scalar
    parameters (a model's image input): `quantize_nhwc` then makes the NHWC input."""
    call = graph.resolve(q)
    if _op(call) != "relax.quantize":
        return None
    x = call.args[0]
    s, zp = _const(graph.resolve(call.args[1])), _const(graph.resolve(call.args[2]))
    dims = _dims(x)
    if s is None or zp is None or s.size != 1 or zp.size != 1 or str(x.ty.dtype) != "float32":
        return None
    if dims is None or len(dims) != 4 or dims[1] > QN.CHANNELS:
        return None
    return x, float(s.reshape(())), int(zp.reshape(()))


def _add_nhwc(plan: _Plan) -> _Plan:
    """The same elementwise add over NHWC operands (its spec carries the NHWC shape)."""
    spec = plan.key[1]
    n, c, h, w = spec.shape
    spec = dataclasses.replace(spec, shape=(n, h, w, c))
    how = json.dumps({"kind": "add", "isa": "any", "spec": dataclasses.asdict(spec)})
    make = lambda: K.add_kernel(spec)  # noqa: E731
    return dataclasses.replace(plan, key=("add", spec), make=make, recipe=how, nhwc=True)


def _matmul_plan(graph, call, q, deq_x, tail, w8, s_w, bias, ep, ep_args, isa, dyn, fuse=True):
    x_shape = _dims(q)
    if x_shape is None or len(x_shape) < 2 or w8.ndim != 2 or x_shape[-1] != w8.shape[0]:
        return None
    if w8.shape[0] > MAX_K:
        return None
    rows = int(np.prod(x_shape[:-1]))
    fused = _row_quantize_source(graph, deq_x, q) if dyn == "row" and fuse else None
    spec = K.MatmulSpec(rows, w8.shape[0], w8.shape[1], str(q.ty.dtype), per_row=dyn == "row")
    if fused is not None:  # the kernel quantizes its own fp32 rows
        spec = dataclasses.replace(spec, fused_quant=True, eps=fused[1], qmax=fused[2])
    plan = K.matmul_plan(spec, isa)
    off = isa.offset(spec.act_dtype)
    w_sum = w8.astype(np.int64).sum(axis=0)
    corr, scale, fbias = _epilogue_constants(w_sum, s_w, bias, ep, ep_args, off)
    consts = [K.pack_matmul_weight(w8, plan)]
    consts += [_pad(a, plan.n_pad) for a in (corr, scale, fbias)]
    xs = deq_x.args[1] if dyn and fused is None else None
    if xs is None:
        consts.append(np.array(1.0, np.float32))
    zp = ep_args["zp_x"]
    key = ("matmul", spec, plan, x_shape, ep)
    return _Plan(
        "matmul",
        tail,
        q if fused is None else fused[0],
        xs,
        key,
        lambda: K.matmul_kernel(spec, plan, x_shape, zp, ep),
        consts,
        ep,
        bool(dyn),
        recipe("matmul", spec, isa, zp, ep, x_shape),
    )


# --------------------------------------------------------------------------------------------
# Rewriting


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces each plan's tail binding by the kernel call (the rest dies in DCE)."""

    def __init__(self, mod: tvm.IRModule, plans: dict, kernels: dict, graph: BindingGraph) -> None:
        super().__init__(mod)
        self.graph = graph
        self.plans = plans
        self.kernels = kernels  # kernel key -> GlobalVar, shared by identical layers
        self.nhwc_of: dict = {}  # NCHW var -> the NHWC kernel output it transposes

    def _kernel(self, plan: _Plan) -> tvm.ir.GlobalVar:
        if plan.key not in self.kernels:
            # TVMScript names every kernel after its Python function: drop that symbol so
            # the module's unique GlobalVar name becomes the exported one.
            func = plan.make().without_attr("global_symbol").with_attr(RECIPE_ATTR, plan.recipe)
            self.kernels[plan.key] = self.builder_.add_func(func, f"int8_{plan.key[0]}")
        return self.kernels[plan.key]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        plan = self.plans.get(binding.var)
        if plan is None:
            pooled = self._pool_nhwc(binding)
            if pooled is None:
                super().visit_var_binding_(binding)
            else:
                self.builder_.emit_normalized(relax.VarBinding(binding.var, pooled))
            return
        args = [self.visit_expr(plan.q), *(self.visit_expr(x) for x in plan.inputs)]
        if plan.image is not None:
            args[0] = self._quantize_image(plan)
        elif plan.nhwc:
            args = [self._nhwc(a) for a in args]
        if plan.pad_channels and plan.image is None:
            pad = [0] * 7 + [plan.pad_channels]
            padded = relax.op.nn.pad(args[0], pad, pad_value=float(plan.zp))
            args[0] = self.builder_.emit(padded)
        args += [relax.const(c) for c in plan.consts]
        if plan.xs is not None:
            args.append(self.visit_expr(plan.xs))
        ty = binding.var.ty
        if not plan.nhwc:
            call = relax.call_tir(self._kernel(plan), args, relax.TensorType(ty.shape, ty.dtype))
            self.builder_.emit_normalized(
                relax.VarBinding(binding.var, self.builder_.normalize(call))
            )
            return
        n, c, h, w = _dims(binding.var)
        out_ty = relax.TensorType(relax.ShapeExpr([n, h, w, c]), ty.dtype)
        out = self.builder_.emit(relax.call_tir(self._kernel(plan), args, out_ty))
        back = self.builder_.normalize(relax.op.permute_dims(out, [0, 3, 1, 2]))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, back))
        self.nhwc_of[binding.var] = out

    def _quantize_image(self, plan: _Plan):
        x, scale, zp = plan.image
        dims = _dims(x)
        dtype = str(plan.q.ty.dtype)
        how = json.dumps({"kind": "quantize_nhwc", "isa": "any", "shape": dims, "zp": zp})
        func = QN.quantize_nhwc_kernel(dims, zp, dtype).without_attr("global_symbol")
        func = func.with_attr(RECIPE_ATTR, how)
        gvar = self.builder_.add_func(func, "quantize_nhwc")
        n, _c, h, w = dims
        out_ty = relax.TensorType(relax.ShapeExpr([n, h, w, QN.CHANNELS]), dtype)
        args = [self.visit_expr(x), relax.const(np.array(scale, np.float32))]
        return self.builder_.emit(relax.call_tir(gvar, args, out_ty))

    def _pool_nhwc(self, binding: relax.VarBinding):
        """A global average pool of an NHWC kernel's output, pooled in NHWC (the transpose
        back to NCHW would cost more than the pool): mean(y, axis=[2, 3]) with y the kernel's
        fp32 output or dequantize(y) with scalar parameters -> reshape(mean(.., axis=[1, 2])).
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
        return self.builder_.normalize(relax.op.reshape(self.builder_.emit(mean), _dims(call)))

    def _nhwc(self, expr):
        """expr (NCHW) as NHWC: the kernel output it came from, else a transpose."""
        if expr in self.nhwc_of:
            return self.nhwc_of[expr]
        return self.builder_.emit(relax.op.permute_dims(expr, [0, 2, 3, 1]))
