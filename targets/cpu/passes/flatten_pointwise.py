"""A pointwise conv over a map whose width fits no whole SIMD vector sees the map as one row.

The conv rule vectorizes pointwise convs with short reductions (and those with half-register
channel counts) over the output width: a 56- or 28-column map gives vectors of 14 of 16 lanes,
split by LLVM into several narrower instructions. A stride-1 unpadded 1x1 conv does not care
where rows end, so over `[N, C, 1, H*W]` (3136 or 784 columns: whole vectors) it computes the
same numbers with full vectors; the reshapes are views, and FuseOps still fuses the bias /
clip / residual tail (MobileNetV2 and EfficientNet-Lite0's 56x56 and 28x28 pointwise convs,
1 thread: 1.2-1.4x faster).

    before:  y = conv2d(x, w)                                  # x [N, C, H, W], w [O, C, 1, 1]
    after:   y = reshape(conv2d(reshape(x, [N, C, 1, H*W]), w), [N, O, H, W])

Only where W is no multiple of the target's SIMD width and H*W is (the target of the
surrounding `with target:`; the host when there is none), and not inside `fuse`'s groups (a
reshape there is a copy inside the kernel). In the x86 legalize stage, before LegalizeOps.
Counter: `convs_flattened`.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from graphopt import _tvm
from graphopt.pass_helpers import rewrite_relax_functions
from graphopt.pass_infra import GraphPass, PassResult, register_pass


def _ints(values) -> list[int] | None:
    if not all(isinstance(v, tirx.IntImm) for v in values):
        return None
    return [int(v) for v in values]


def _static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if str(getattr(expr.ty, "dtype", "")) != "float32" or not isinstance(shape, relax.ShapeExpr):
        return None
    return _ints(shape.values)


def pointwise_shape(call: relax.Call) -> list[int] | None:
    """[N, C, H, W] of a stride-1 unpadded 1x1 NCHW / OIHW fp32 conv2d, else None."""
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout)) != ("NCHW", "OIHW"):
        return None
    if str(attrs.out_layout) != "NCHW" or str(attrs.out_dtype) not in (
        "",
        "void",
        "None",
        "float32",
    ):
        return None
    if int(attrs.groups) != 1 or any(int(p) for p in attrs.padding):
        return None
    if any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation):
        return None
    data, weight = _static_shape(call.args[0]), _static_shape(call.args[1])
    if data is None or weight is None or len(data) != 4 or weight[2:] != [1, 1]:
        return None
    return data


def _lanes() -> int:
    from graphopt.targets.cpu.schedules import cpu_info

    target = tvm.target.Target.current(allow_none=True)
    if target is None:
        target = _tvm.make_target({"kind": "llvm", "mcpu": _tvm.host_cpu_name()})
    info = cpu_info(target)
    return info.lanes if info is not None else 0


@relax.expr_functor.mutator
class _Flatten(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, lanes: int) -> None:
        super().__init__(mod)
        self.lanes = lanes
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        shape = pointwise_shape(call)
        if shape is None:
            return call
        n, c, h, w = shape
        if h == 1 or w % self.lanes == 0 or (h * w) % self.lanes != 0:
            return call
        self.count += 1
        row = self.builder_.emit(relax.op.reshape(call.args[0], [n, c, 1, h * w]))
        conv = self.builder_.emit(relax.op.nn.conv2d(row, call.args[1]))
        out = _static_shape(conv)
        return relax.op.reshape(conv, [n, out[1], h, w])


def _is_fused_group(func: relax.Function) -> bool:
    """`fuse`'s groups become one kernel each: a reshape inside would be a copy in the kernel."""
    attrs = func.attrs
    return attrs is not None and ("Primitive" in attrs or "Composite" in attrs)


@register_pass
class FlattenPointwise(GraphPass):
    """Stride-1 unpadded 1x1 NCHW conv2d over maps of partial-vector width as one H*W row."""

    name = "flatten-pointwise"

    def run(self, mod: tvm.IRModule) -> PassResult:
        lanes = _lanes()
        if not lanes:
            return PassResult(mod, False, {"convs_flattened": 0})
        new, count = rewrite_relax_functions(
            mod,
            lambda m: _Flatten(m, lanes),
            skip=_is_fused_group,
            finish=relax.analysis.remove_all_unused,
        )
        changed = count > 0 and not _tvm.structural_equal(new, mod)
        return PassResult(new if changed else mod, changed, {"convs_flattened": count})
