"""Patterns and rewrites behind the `fuse` pass (private helper of passes/fuse.py).

Every pattern family is a list of `relax.transform.FusionPattern`s, longest first: each
FusionPattern is one partitioning sweep of FuseOpsByPattern, so listing a pattern with an
elementwise epilogue (a residual add) before the same pattern without it lets the larger group
claim the bindings.
Grouping never changes arithmetic, so fusion patterns do not check constant values; the
layer-norm rewrite does change the computation and checks everything it relies on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import GlobalVarPattern, is_const, is_op, wildcard
from tvm.relax.dpl.pattern import DFPattern, TuplePattern

from graphopt import _tvm
from graphopt.binding_graph import const_value

PREFIX = "graphopt."
FusionPattern = relax.transform.FusionPattern


def _op(name: str) -> Callable[..., DFPattern]:
    return is_op("relax." + name)


def _call_tir(*args: DFPattern) -> DFPattern:
    return is_op("relax.call_tir")(
        GlobalVarPattern(), TuplePattern(list(args)), add_constraint=False
    )


# --- checks ---------------------------------------------------------------------------------

_MINMAX = re.compile(r"^(maximum|minimum)\d*$")


def _group_is_closed(ctx, allow_extra_outputs: bool = False) -> bool:
    """No value computed inside the group is used outside it, except the group's result.

    FuseOpsByPattern would otherwise build a multi-output function (a matmul whose result is
    also used elsewhere would still be fused); graphopt keeps such bindings unfused. With
    `allow_extra_outputs`, such values become extra outputs instead, provided nothing that
    uses them feeds back into the group (that would make a cycle).
    """
    defined = set(ctx.matched_bindings.keys())
    output = ctx.value_to_bound_var[ctx.matched_expr]
    leaked = []
    for var in defined:
        if var.same_as(output):
            continue
        users = [u for u in ctx.var_usages.get(var, []) if u not in defined]
        if users or not isinstance(var, relax.DataflowVar):
            if not allow_extra_outputs:
                return False
            leaked.extend(users)
    return not leaked or not _reaches_group(ctx, leaked, defined)


def _reaches_group(ctx, start: list, defined: set) -> bool:
    """Whether any var in `start`, or anything computed from it, is an input of the group."""
    inputs: set = set()
    for value in ctx.matched_bindings.values():
        inputs.update(v for v in relax.analysis.free_vars(value) if v not in defined)
    seen, todo = set(), list(start)
    while todo:
        var = todo.pop()
        if var in inputs:
            return True
        if var not in seen:
            seen.add(var)
            todo.extend(ctx.var_usages.get(var, []))
    return False


def _known_tir_calls(ctx, elementwise: frozenset[str] = frozenset()) -> bool:
    """call_tir inside a group only for the importer's Clip kernels (maximum / minimum) and
    kernels named in `elementwise` (see `elementwise_kernels`)."""
    for value in ctx.matched_bindings.values():
        if isinstance(value, relax.Call) and _op_name(value) == "relax.call_tir":
            name = value.args[0].name_hint
            if not _MINMAX.match(name) and name not in elementwise:
                return False
    return True


def _mostly_zeros(w: np.ndarray) -> bool:
    return w is not None and w.size > 0 and np.count_nonzero(w) * 2 <= w.size


def _sparse_weight(ctx) -> bool:
    """Whether a conv or matmul of the group has a constant weight at least half zeros: such a
    layer stays a bare binding (and out of combined Q/K/V matmuls), which the target's
    `sparsify` matches, so a pruned model at -O3 gets the block-sparse kernels of -O2."""
    for value in ctx.matched_bindings.values():
        if _op_name(value) in ("relax.nn.conv2d", "relax.matmul"):
            data = const_value(value.args[1])
            if data is not None and _mostly_zeros(data):
                return True
    return False


def check_group(ctx, elementwise: frozenset[str] = frozenset()) -> bool:
    closed = _group_is_closed(ctx) and _known_tir_calls(ctx, elementwise)
    return closed and not _sparse_weight(ctx)


def elementwise_kernels(mod: tvm.IRModule) -> frozenset[str]:
    """The module's TIR kernels that FuseOps would fuse after a conv or matmul.

    The importer emits some ops as call_tir (ONNX Pad becomes a `pad` kernel). FuseOps fuses
    a following kernel whose pattern is elementwise or broadcast (TVM's AnnotateTIROpPattern:
    a pad that only adds a row and a column at the end qualifies); a composite group is opaque
    to FuseOps, so the group takes such a kernel itself or the fusion is lost.
    """
    prims = {
        gv: f
        for gv, f in mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and not _MINMAX.match(gv.name_hint)
    }
    if not prims:
        return frozenset()
    annotated = relax.transform.AnnotateTIROpPattern()(tvm.IRModule(prims))
    broadcast = 1  # TVM's OpPatternKind: kElemWise 0, kBroadcast 1, kInjective 2, ...
    return frozenset(
        gv.name_hint
        for gv, f in annotated.functions.items()
        if f.attrs is not None
        and "op_pattern" in f.attrs
        and int(f.attrs["op_pattern"]) <= broadcast
    )


def check_attention(ctx, max_keys: int = 0) -> bool:
    """Attention may also return its probabilities (models that output them). Static sizes
    only: the fused kernel's row blocks are planned from them, and with a symbolic sequence
    length the group ran unscheduled (MiniLM at 128 tokens: 1.7 s against 4 ms), while the
    separate matmul and softmax kernels handle symbolic lengths (docs/SHAPES.md). With
    `max_keys`, only rows of at most so many keys (a target kernel's limit)."""
    if max_keys and not _keys_at_most(ctx, max_keys):
        return False
    return _group_is_closed(ctx, allow_extra_outputs=True) and _static_shapes(ctx)


def _static_shapes(ctx) -> bool:
    return all(
        _tvm.static_shape(var.ty) is not None
        for var in ctx.matched_bindings
        if isinstance(var.ty, relax.TensorType)
    )


def _keys_at_most(ctx, max_keys: int) -> bool:
    for value in ctx.matched_bindings.values():
        if isinstance(value, relax.Call) and _op_name(value) == "relax.nn.softmax":
            keys = _static(value.ty.shape.values[-1:])
            return keys is not None and keys[0] <= max_keys
    return False


def _op_name(call: relax.Call) -> str:
    return call.op.name if isinstance(call.op, tvm.ir.Op) else ""


# --- building blocks ------------------------------------------------------------------------

UNARY_ACTIVATIONS = (
    "nn.relu",
    "nn.silu",
    "nn.leakyrelu",
    "nn.gelu",
    "nn.gelu_tanh",
    "sigmoid",
    "tanh",
)


def _unary(t: DFPattern, names=UNARY_ACTIVATIONS) -> DFPattern:
    pats = [_op(n)(t) for n in names] + [_op("clip")(t, wildcard(), wildcard())]
    out = pats[0]
    for p in pats[1:]:
        out = out | p
    return out


def _relu6(t: DFPattern) -> DFPattern:
    """clip(t, 0, 6) as R.clip (relax.op.nn.relu6 builds one too) or, for an ONNX Clip with
    min/max inputs, the importer's maximum and minimum kernels."""
    minmax = _call_tir(_call_tir(t, is_const()), is_const())
    return _op("clip")(t, wildcard(), wildcard()) | minmax


def _silu(t: DFPattern) -> DFPattern:
    return _op("multiply")(t, _op("sigmoid")(t))


def _hardswish(t: DFPattern) -> DFPattern:
    """t * relu6(t + 3) / 6, in the orders PyTorch exports and TVM's HardSwish importer use."""
    r6 = _relu6(_op("add")(t, is_const()))
    mul, div, c = _op("multiply"), _op("divide"), is_const
    return mul(t, div(r6, c())) | div(mul(t, r6), c()) | mul(mul(t, r6), c()) | mul(t, mul(r6, c()))


def _half_product(t: DFPattern, one_plus: DFPattern) -> DFPattern:
    """0.5 * t * one_plus, any association (multiply is matched commutatively)."""
    mul = _op("multiply")
    return (
        mul(mul(t, one_plus), is_const())
        | mul(mul(t, is_const()), one_plus)
        | mul(t, mul(one_plus, is_const()))
    )


def _gelu_erf(t: DFPattern) -> DFPattern:
    """t * 0.5 * (1 + erf(t / sqrt(2)))."""
    scaled = _op("divide")(t, is_const()) | _op("multiply")(t, is_const())
    return _half_product(t, _op("add")(_op("erf")(scaled), is_const()))


def _gelu_tanh(t: DFPattern) -> DFPattern:
    """t * 0.5 * (1 + tanh(sqrt(2 / pi) * (t + 0.044715 * t^3)))."""
    mul = _op("multiply")
    cube = _op("power")(t, is_const()) | mul(mul(t, t), t)
    inner = mul(_op("add")(t, mul(cube, is_const())), is_const())
    return _half_product(t, _op("add")(_op("tanh")(inner), is_const()))


def _with_bias(producer: DFPattern) -> DFPattern:
    return _op("add")(producer, wildcard()) | producer


EPILOGUE_OPS = ("add", "multiply", "subtract", "divide")


def _family(
    name: str, bodies: list[tuple[str, DFPattern]], elementwise: frozenset[str] = frozenset()
) -> list[FusionPattern]:
    """Each body followed by one binary elementwise op, then (given `elementwise` kernels) by
    one such TIR kernel, then the body alone.

    FuseOps would fuse an elementwise op after a matmul or conv (a residual add, a
    squeeze-excite gate, a pad kernel) into the same kernel, but it sees a composite function
    as opaque: the epilogue variants keep that fusion. Being listed first, they claim the
    bindings.
    """

    def check(ctx) -> bool:
        return check_group(ctx, elementwise)

    out = []
    for kind, body in bodies:
        other = wildcard()
        epilogue = _op(EPILOGUE_OPS[0])(body, other)
        for op in EPILOGUE_OPS[1:]:
            epilogue = epilogue | _op(op)(body, other) | _op(op)(other, body)
        out.append(FusionPattern(f"{PREFIX}{name}.{kind}_epilogue", epilogue, check=check))
        if elementwise:
            tir = _call_tir(body)
            out.append(FusionPattern(f"{PREFIX}{name}.{kind}_kernel_epilogue", tir, check=check))
        out.append(FusionPattern(f"{PREFIX}{name}.{kind}", body, check=check))
    return out


# --- families -------------------------------------------------------------------------------


def conv_act_patterns(elementwise: frozenset[str] = frozenset()) -> list[FusionPattern]:
    """conv2d (+ bias) + activation: hard-swish, SiLU, ReLU6, then single-op activations."""
    t = _with_bias(_op("nn.conv2d")(wildcard(), wildcard()))
    return _family(
        "conv_act",
        [
            ("hardswish", _hardswish(t)),
            ("silu", _silu(t)),
            ("relu6", _relu6(t)),
            ("unary", _unary(t)),
        ],
        elementwise,
    )


def matmul_gelu_patterns() -> list[FusionPattern]:
    """matmul (+ bias) + GELU in erf or tanh form, or the GELU operators."""
    t = _with_bias(_op("matmul")(wildcard(), wildcard()))
    return _family(
        "matmul_gelu",
        [
            ("erf", _gelu_erf(t)),
            ("tanh", _gelu_tanh(t)),
            ("op", _op("nn.gelu")(t) | _op("nn.gelu_tanh")(t)),
        ],
    )


def matmul_bias_patterns() -> list[FusionPattern]:
    """matmul + bias (+ ReLU or another single-op activation), or matmul + activation."""
    mm = _op("matmul")(wildcard(), wildcard())
    biased = _op("add")(mm, wildcard())
    return _family(
        "matmul_bias",
        [("act", _unary(_with_bias(mm))), ("bias", biased)],
    )


def parallel_matmul_patterns(split_inputs: set) -> list[FusionPattern]:
    """The combined matmul (+ bias) (+ activation) whose result is split, as its own group.

    The split stays outside: a kernel that writes three outputs is not a matmul that
    schedule-cpu's matmul rule recognizes, and the consumers (the attention group, or FuseOps
    with the following reshapes) read the pieces anyway. `split_inputs` holds the vars that
    feed a `split` (see `split_inputs`), so only the combined matmuls form this family.
    """
    mm = _op("matmul")(wildcard(), wildcard())
    body = _unary(_with_bias(mm)) | _with_bias(mm)

    def check(ctx) -> bool:
        out = ctx.value_to_bound_var[ctx.matched_expr]
        return any(out.same_as(v) for v in split_inputs) and check_group(ctx)

    return [FusionPattern(f"{PREFIX}parallel_matmul", body, check=check)]


def split_inputs(func: relax.Function) -> set:
    """Vars that are the input of a `split` in `func`."""
    found: set = set()

    def visit(e):
        if isinstance(e, relax.Call) and _op_name(e) == "relax.split":
            if isinstance(e.args[0], relax.Var):
                found.add(e.args[0])

    relax.analysis.post_order_visit(func, visit)
    return found


def attention_patterns(max_keys: int = 0) -> list[FusionPattern]:
    """matmul(Q, K^T) [* or / scale] [+ mask] -> softmax [-> NaN guard] -> matmul(., V).

    The variants exporters produce: the scale on the scores, or on Q and K each (PyTorch's
    scaled_dot_product_attention multiplies both by d^-1/4); mask present or absent; the NaN
    guard `where(isnan(p), 0, p)` that recent PyTorch exports put after a masked softmax. The
    head split (reshape, transpose) that feeds Q, K or V and the head merge (transpose,
    reshape) after the output go into the group too: the kernel then reads the projections and
    writes the merged heads in place, instead of separate transpose kernels around it.
    Also the casts ToMixedPrecision puts between these ops (fp16 / bf16 matmuls with fp32
    results, an fp32 softmax, a constant scale cast to 16 bits), so a GPU target that fuses
    after its mixed-precision pass finds the same group. `max_keys`: see `check_attention`.
    """

    def operand() -> DFPattern:
        w = wildcard()
        heads = _op("permute_dims")(_op("reshape")(w, wildcard())) | _op("permute_dims")(w)
        base = heads | w
        return _cast(_scaled(base) | base)

    scores = _cast(_op("matmul")(operand(), operand()))
    scaled = _cast(_scaled(scores) | scores)
    masked = _op("add")(scaled, wildcard()) | scaled
    probs = _op("nn.softmax")(masked)
    guarded = _cast(_op("where")(_op("isnan")(probs), _constant(), probs) | probs)
    out = _cast(_op("matmul")(guarded, operand()))
    merged = _op("permute_dims")(out)
    tails = [_op("reshape")(merged, wildcard()), merged, out]
    check = partial(check_attention, max_keys=max_keys)
    return [FusionPattern(f"{PREFIX}attention", t, check=check) for t in tails]


def _constant() -> DFPattern:
    return is_const() | _op("astype")(is_const())


def _cast(t: DFPattern) -> DFPattern:
    return _op("astype")(t) | t


def _scaled(t: DFPattern) -> DFPattern:
    return _op("divide")(t, _constant()) | _op("multiply")(t, _constant())


def family_of(composite: str) -> str:
    """'graphopt.conv_act.relu6_epilogue' -> 'conv_act'."""
    return composite[len(PREFIX) :].split(".")[0]


# --- layer norm -----------------------------------------------------------------------------


class LayerNormRewriter:
    """Decomposed layer norm (as PyTorch exports it) -> relax.op.nn.layer_norm.

    mean -> subtract -> power 2 (or d * d) -> mean -> add eps -> sqrt -> divide (or multiply by
    rsqrt) [-> multiply gamma [-> add beta]]. Run `rewrite` once per top (`affine`, `scaled`,
    `plain`): rewrite_call rewrites the first binding that matches, so the longest form goes
    first.
    """

    def __init__(self) -> None:
        self.x, self.two, self.eps = wildcard(), is_const(), is_const()
        self.gamma, self.beta = is_const(), is_const()
        self.mean = _op("mean")(self.x)
        self.diff = _op("subtract")(self.x, self.mean)
        self.square = _op("power")(self.diff, self.two) | _op("multiply")(self.diff, self.diff)
        self.var = _op("mean")(self.square)
        plus_eps = _op("add")(self.var, self.eps)
        self.norm = _op("divide")(self.diff, _op("sqrt")(plus_eps)) | _op("multiply")(
            self.diff, _op("rsqrt")(plus_eps)
        )
        self.scaled = _op("multiply")(self.norm, self.gamma)
        self.tops = {
            "affine": _op("add")(self.scaled, self.beta),
            "scaled": self.scaled,
            "plain": self.norm,
        }
        self.count = 0

    def rewrite(self, func: relax.Function) -> relax.Function:
        for top in self.tops.values():
            func = relax.dpl.rewrite_call(top, self, func)
        return func

    def __call__(self, orig: relax.Expr, m: dict) -> relax.Expr:
        x = m[self.x]
        ty = x.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.dtype not in _FLOATS:
            return orig
        rank = len(ty.shape.values)
        axes = _same_trailing_axes(m[self.mean], m[self.var], rank)
        if axes is None:
            return orig
        if self.two in m and _scalar(m[self.two], rank) != 2.0:
            return orig
        eps = _scalar(m[self.eps], rank)
        if eps is None or eps < 0:
            return orig
        dtype = str(ty.dtype)
        eps = float(str(np.dtype(dtype).type(eps)))  # 1e-05, not 9.99999974e-06
        norm_shape = _static(ty.shape.values[rank - len(axes) :])
        if norm_shape is None:
            return orig
        gamma = _affine_param(m, self.gamma, norm_shape, rank, dtype, 1.0)
        beta = _affine_param(m, self.beta, norm_shape, rank, dtype, 0.0)
        if gamma is None or beta is None:
            return orig
        new = relax.BlockBuilder().normalize(
            relax.op.nn.layer_norm(x, gamma, beta, axes=axes, epsilon=eps)
        )
        if not _tvm.structural_equal(new.ty, orig.ty):
            return orig  # broadcasting made the original result larger than x
        self.count += 1
        return new


_FLOATS = ("float16", "float32", "float64")


def _same_trailing_axes(mean1: relax.Call, mean2: relax.Call, rank: int) -> list[int] | None:
    """Both means reduce the same trailing axes with keepdims; those axes, as negatives."""
    found = []
    for call in (mean1, mean2):
        attrs = call.attrs
        if not bool(attrs.keepdims) or attrs.axis is None:
            return None
        found.append(sorted(int(a) % rank for a in attrs.axis))
    if found[0] != found[1] or not found[0]:
        return None
    axes = found[0]
    if axes != list(range(rank - len(axes), rank)):
        return None
    return [a - rank for a in axes]


def _static(dims) -> list[int] | None:
    try:
        return [int(d) for d in dims]
    except (TypeError, ValueError):
        return None


def _scalar(const: relax.Expr, rank: int) -> float | None:
    """The value of a one-element constant that does not broadcast beyond `rank` dims."""
    value = _tvm.constant_value(const)
    return float(value.reshape(-1)[0]) if value.size == 1 and value.ndim <= rank else None


def _affine_param(m, pat, norm_shape, rank, dtype, default) -> tvm.ir.Constant | None:
    """gamma / beta as a constant of the normalized shape (broadcast if it is smaller)."""
    if pat not in m:
        return relax.const(np.full(norm_shape, default, dtype=dtype))
    value = _tvm.constant_value(m[pat])
    if value.ndim > rank:
        return None
    lead = value.shape[: max(0, value.ndim - len(norm_shape))]
    if any(d != 1 for d in lead):
        return None  # varies along a non-normalized axis: not a layer-norm parameter
    tail = value.reshape(value.shape[len(lead) :])
    try:
        full = np.broadcast_to(tail, norm_shape)
    except ValueError:
        return None
    return relax.const(np.ascontiguousarray(full).astype(dtype))


# --- horizontal fusion of parallel matmuls ----------------------------------------------------


def combine_parallel_matmuls(mod: tvm.IRModule, gvars: list) -> tuple[tvm.IRModule, int]:
    """TVM's CombineParallelMatmul on the functions `gvars`, whose weights are constants.

    CombineParallelMatmul matches weights and biases only when they are variables, and an ONNX
    import binds them as constants: hoist those constants into bindings, combine, and put the
    constants back. Returns the module and the number of combined groups (one `split` each);
    the concatenated weights are left for fold-constants.
    """
    hoisted = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    consts: dict[relax.Var, tvm.ir.Constant] = {}
    for gv in gvars:
        hoisted[gv] = _hoist_weights(mod[gv], consts)
    if not consts:
        return mod, 0

    def only_constant_weights(_lhs, rhs, bias, _bindings) -> bool:
        dense = not any(_mostly_zeros(const_value(consts[v])) for v in rhs if v in consts)
        return all(v in consts for v in rhs) and all(v in consts for v in bias) and dense

    combined = relax.transform.CombineParallelMatmul(only_constant_weights)(hoisted)
    new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    total = 0
    for gv in gvars:
        groups = _count(combined[gv], "relax.split") - _count(mod[gv], "relax.split")
        if groups > 0:
            new[gv] = _inline_constants(combined[gv], consts)
            total += groups
    return (new, total) if total else (mod, 0)


def _count(func: relax.Function, op_name: str) -> int:
    n = 0

    def visit(e):
        nonlocal n
        if isinstance(e, relax.Call) and _op_name(e) == op_name:
            n += 1

    relax.analysis.post_order_visit(func, visit)
    return n


def _hoist_weights(func: relax.Function, consts: dict) -> relax.Function:
    """Bind each constant matmul weight, and each constant added to a matmul, to a var.

    CombineParallelMatmul only sees a bias written after the matmul (`add(mm, b)`): `add(b, mm)`
    is swapped, which changes no bits (fp addition is commutative).
    """
    if not isinstance(func.body, relax.SeqExpr):
        return func
    first = len(consts)
    blocks = []
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            blocks.append(block)
            continue
        matmuls: set[relax.Var] = set()
        bindings = []
        for b in block.bindings:
            value = b.value
            if isinstance(b, relax.VarBinding) and isinstance(value, relax.Call):
                name = _op_name(value)
                args = list(value.args)
                slots = []
                if name == "relax.matmul":
                    matmuls.add(b.var)
                    slots = [1]
                elif name == "relax.add" and any(a in matmuls for a in args):
                    if args[0] not in matmuls:
                        args.reverse()  # bias + x (PyTorch's Gemm export) -> x + bias: exact
                    slots = [i for i, a in enumerate(args) if a not in matmuls]
                for i in slots:
                    if isinstance(args[i], tvm.ir.Constant):
                        var = relax.DataflowVar(f"w{len(consts)}", args[i].ty)
                        consts[var] = args[i]
                        bindings.append(relax.VarBinding(var, args[i]))
                        args[i] = var
                if slots:
                    value = relax.Call(value.op, args, value.attrs, value.ty_args)
                    b = relax.VarBinding(b.var, value)
            bindings.append(b)
        blocks.append(relax.DataflowBlock(bindings))
    if len(consts) == first:
        return func
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)


@relax.expr_functor.mutator
class _Inline(relax.PyExprMutator):
    def __init__(self, consts: dict) -> None:
        super().__init__()
        self.consts = consts

    def visit_dataflow_var_(self, var):
        return self.consts.get(var, var)


def _inline_constants(func: relax.Function, consts: dict) -> relax.Function:
    """Replace the hoisted vars by their constants again and drop their bindings."""
    inline = _Inline(consts)
    blocks = []
    for block in func.body.blocks:
        bindings = []
        for b in block.bindings:
            if b.var in consts:
                continue
            if isinstance(b, relax.VarBinding):
                b = relax.VarBinding(b.var, inline.visit_expr(b.value))
            bindings.append(b)
        cls = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(cls(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
