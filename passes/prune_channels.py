"""Remove hidden channels (structured pruning) as `--prune macs=X` decided.

For each region of `graphopt/compress/channels/chains.py` named in the plan file (the
producer layer's name: `<region>.keep` kept channel indices, `<region>.weight` the consumer's
refit weight [K, N] (a KxK conv's: the kept channels' windows, [kept x KH x KW, N]),
`<region>.bias` the bias [N] that keeps its output mean): the producer
keeps only those output channels, every per-channel constant and depthwise filter in between
is sliced the same way, and the consumer gets its refit weight with the bias added after it.
A concatenation (`concat.py`, regions named `concat_<first producer>`, kept channels numbered
in the concatenation) slices each branch by the channels that fall in it, and a branch that
keeps none leaves the concatenation. Attention heads (`heads.py`, regions named
`heads_<Q layer>`, kept channels whole heads): the
Q, K and V projections keep those output columns (and their biases), the reshapes that split
and merge the heads take the kept head count, and the output projection is the consumer.
Block distillation (`distill.py`) adds per region the producer's trained weight
(`<region>.producer`, kept channels) and output shift (`<region>.producer_shift`), and per
depthwise conv `<region>.dw.<layer>` / `<region>.dw_shift.<layer>`: the layer takes that
weight and the shift is subtracted right after it, as the probe that trained them ran it.
The model computes what the plan's numpy refit says (tested against it); the graph stays
dense, only smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt.compress.channels.chains import Operands, Region
from graphopt.compress.channels.concat import ConcatRegion
from graphopt.compress.channels.heads import HeadRegion, find_all
from graphopt.compress.common.layers import bound_constants, find_layers
from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, PassResult, register_pass


@register_pass
class PruneChannels(GraphPass):
    """Drop hidden channels (FFN / expansion) and attention heads, refit consumers (a plan file)."""

    name = "prune-channels"

    @dataclass(frozen=True)
    class Options:
        plan: str = ""  # .npz written by `--prune macs=X` (graphopt/compress/channels)

    def run(self, mod: tvm.IRModule) -> PassResult:
        if not self.options.plan:
            raise PipelineError("prune-channels: needs plan=FILE (written by --prune macs=X)")
        with np.load(self.options.plan) as data:
            plan = {k: data[k] for k in data.files}
        func = mod["main"]
        regions = [r for r in find_all(mod) if f"{r.name}.keep" in plan]
        if not regions:
            return PassResult(mod, False, {"regions": 0})
        rewriter = _Rewriter(mod, regions, plan, Operands(mod, bound_constants(func)))
        main = rewriter.visit_expr(func)
        # a new module: the builder's is `mod` itself, which a pass must leave as it was
        built = rewriter.builder_.get()
        new = tvm.IRModule(dict(built.functions.items()), attrs=built.attrs)
        new["main"] = main
        removed = sum(r.channels - len(plan[f"{r.name}.keep"]) for r in regions)
        return PassResult(new, True, {"regions": len(regions), "channels_removed": removed})


def _binding_value(mod: tvm.IRModule, var) -> relax.Expr:
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if b.var.same_as(var):
                return b.value
    raise PipelineError(f"prune-channels: {var} is not bound in main")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, regions: list[Region], plan: dict, ops: Operands) -> None:
        super().__init__(mod)
        self.plan, self.ops, self.consts = plan, ops, ops.consts
        self.role: dict = {}  # var -> (region, "producer" | "inner" | ... | "consumer")
        self.layers: dict = {ly.var: ly for ly in find_layers(mod["main"])}
        self.pending: dict = {}  # var -> its trained shift, folded into the bias add after it
        self.readers: dict = {}
        for block in mod["main"].body.blocks:
            for b in block.bindings:
                for v in relax.analysis.free_vars(b.value):
                    self.readers[v] = self.readers.get(v, 0) + 1
        self.branch: dict = {}  # var -> (kept channels numbered in its branch, channels)
        for r in regions:
            if isinstance(r, ConcatRegion):
                self._concat_roles(r, plan[f"{r.name}.keep"])
                continue
            heads = isinstance(r, HeadRegion)
            for ly in r.qkv if heads else [r.producer]:
                self.role[ly.var] = (r, "producer")
            for var in r.bindings if heads else r.bindings[1:]:
                self.role[var] = (r, "inner")
            for var in r.splits if heads else []:
                self.role[var] = (r, "split")
            if heads:
                self.role[r.merge] = (r, "merge")
            self.role[r.consumer.var] = (r, "consumer")

    def _concat_roles(self, r: ConcatRegion, keep) -> None:
        """A concatenation's branches work on their own channel numbers (`self.branch`)."""
        for b in r.branches:
            self.role[b.bindings[0]] = (r, "producer")
            for var in b.bindings:
                self.branch[var] = (r.local_keep(keep, b), b.channels)
            for var in b.bindings[1:]:
                self.role[var] = (r, "inner")
        self.role[r.bindings[0]] = (r, "concat")
        for var in r.bindings[1:]:
            self.role[var] = (r, "inner")
        self.role[r.consumer.var] = (r, "consumer")

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        found = self.role.get(binding.var)
        if found is None:
            super().visit_var_binding_(binding)
            return
        region, role = found
        keep, channels = self.branch.get(
            binding.var, (self.plan[f"{region.name}.keep"], region.channels)
        )
        if len(keep) == 0:
            return  # a concatenated branch that keeps no channel: nothing reads it now
        call = binding.value
        if role == "inner":
            value = self._inner(binding.var, call, region, keep, channels)
        elif role == "concat":
            value = self._concat(call, region)
        elif role in ("split", "merge"):
            value = self._reshape(call, region, len(keep), role)
        else:
            args = [self.visit_expr(a) for a in call.args]
            if role == "consumer":
                self._consumer(binding, region, args)
                return
            layer = self.layers[binding.var]
            w = self.plan.get(f"{region.name}.producer")
            if w is None:
                w = layer.weight[:, keep] if layer.kind == "matmul" else layer.weight[keep]
            args[1] = relax.const(np.asarray(w, np.float32))
            value = relax.Call(call.op, args, call.attrs, call.ty_args)
        new_var = self.builder_.emit(value)
        shift = self._shift(region, binding.var, role)
        if shift is not None and self._bias_add_follows(region, binding.var):
            self.pending[binding.var] = shift
        elif shift is not None:
            new_var = self.builder_.emit(R.subtract(new_var, relax.const(shift)))
        self.set_var_remap(binding.var, new_var)

    def _bias_add_follows(self, region: Region, var) -> bool:
        """Whether the only reader of `var` is the region's next binding, an add of a
        constant: a trained shift then goes into that constant (no extra op, and the
        conv + bias patterns of later passes still match)."""
        at = list(region.bindings).index(var) if var in region.bindings else -1
        if self.readers.get(var, 0) != 1 or not 0 <= at < len(region.bindings) - 1:
            return False
        name, operands = self.ops.op_and_args(_binding_value(self.ops.mod, region.bindings[at + 1]))
        if name != "relax.add" or sum(a.same_as(var) for a in operands) != 1:
            return False
        other = next(a for a in operands if not a.same_as(var))
        return isinstance(self.consts.get(other, other), tvm.ir.GenericConst)

    def _shift(self, region: Region, var, role: str):
        """The trained shift after a producer or depthwise conv (block distillation), shaped
        to broadcast along the region's channel axis; None when the plan has none."""
        if role == "producer":
            key = f"{region.name}.producer_shift"
        elif role == "inner" and var in self.layers:
            key = f"{region.name}.dw_shift.{self.layers[var].name}"
        else:
            return None
        if key not in self.plan:
            return None
        shape = [1] * len(var.ty.shape.values)
        shape[region.axis] = -1
        return np.asarray(self.plan[key], np.float32).reshape(shape)

    def _concat(self, call: relax.Call, region: ConcatRegion) -> relax.Expr:
        """The concatenation of the branches that keep channels."""
        kept = [
            self.visit_expr(f)
            for f, b in zip(call.args[0].fields, region.branches)
            if len(self.branch[b.bindings[0]][0])
        ]
        return R.concat(kept, axis=int(call.attrs.axis))

    def _inner(self, var, call: relax.Call, region, keep, channels: int) -> relax.Expr:
        """A channel-wise op with its per-channel constants (or depthwise filter) sliced; the
        importer's Clip kernels become relax.maximum / minimum (their output types change)."""
        name, operands = self.ops.op_and_args(call)
        args = [self.visit_expr(a) for a in operands]
        if name == "relax.nn.conv2d":  # depthwise
            a = call.attrs
            w = self.consts.get(operands[1], operands[1]).value.numpy()[keep]
            layer = self.layers.get(var)
            if layer is not None:
                w = self.plan.get(f"{region.name}.dw.{layer.name}", w)
            return R.nn.conv2d(
                args[0],
                relax.const(w),
                strides=a.strides,
                padding=a.padding,
                dilation=a.dilation,
                groups=len(keep),
                data_layout=a.data_layout,
                kernel_layout=a.kernel_layout,
                out_layout=a.out_layout,
                out_dtype=a.out_dtype,
            )
        ndim = len(call.ty.shape.values)
        for i, orig in enumerate(operands):
            const = self.consts.get(orig, orig)
            if not isinstance(const, tvm.ir.GenericConst):
                continue
            value = const.value.numpy()
            shape = [1] * (ndim - np.ndim(value)) + list(np.shape(value))
            value = value.reshape(shape)
            if shape[region.axis] == channels:  # one value per channel: slice it
                value = np.take(value, keep, axis=region.axis)
                args[i] = relax.const(value)
            shifted = [a for a in operands if a in self.pending]
            if name == "relax.add" and shifted:  # (y - s) + b = y + (b - s)
                args[i] = relax.const((value - self.pending.pop(shifted[0])).astype(np.float32))
        if call.op.name == "relax.call_tir":
            return R.maximum(*args) if name == "relax.maximum" else R.minimum(*args)
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def _reshape(self, call: relax.Call, region: HeadRegion, kept: int, role: str):
        """A head split [.., H, D] or merge [.., H*D] reshape with the kept head count."""
        shape = [int(d) for d in call.ty.shape.values]
        if role == "split":
            shape[-2] = kept // region.head_dim
        else:
            shape[-1] = kept
        return R.reshape(self.visit_expr(call.args[0]), shape)

    def _consumer(self, binding: relax.VarBinding, region: Region, args: list) -> None:
        """The consumer with its refit weight, then + bias (the same output variable)."""
        w = self.plan[f"{region.name}.weight"]
        bias = self.plan[f"{region.name}.bias"]
        q = region.consumer
        if q.kind == "matmul":
            args[1] = relax.const(w)
        else:  # [kept channels x KH x KW, O] -> OIHW
            o, _c, kh, kw = q.weight_shape
            args[1] = relax.const(np.ascontiguousarray(w.T.reshape(o, -1, kh, kw)))
            bias = bias.reshape(1, -1, 1, 1)
        call = binding.value
        out = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
        value = self.builder_.normalize(R.add(out, relax.const(bias.astype(np.float32))))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
