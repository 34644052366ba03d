"""Matmuls and 1x1 convs with constant fp32 weights -> 16-bit (bf16 or fp16) weight matmul ops.

Each `matmul(x, W)` (x fp32 [.., K] with a static K, other dims possibly symbolic; W a
constant [K, N]: the matmul layers of `compress/common/layers.py`) not in `skip` becomes one
`call_tir` of the 16-bit matmul op (`graphopt.precision_ops`): W is stored as its 16-bit bit
patterns (uint16 [K, N], rounded to nearest even), the op rounds x to the same format and sums
the exact products in fp32. The fp32 weight leaves the graph, so the artifact stores half its
bytes.

A pointwise conv (1x1 kernel, stride 1, no padding, one group: `pointwise`) is the same op over
channels: x [N, C, H, W] -> permute to [N, H, W, C] -> the op with W^T [C, O] -> permute back.
On x86 the `layout` and `sink-transposes` stages cancel those permutes against the NHWC
transposes of the neighbours.

With `depthwise`, a depthwise conv (one filter per channel, static shapes) becomes the 16-bit
depthwise op (`graphopt.precision_depthwise`), also in NHWC between two permutes.

With `windows`, a full conv (one group, static shapes, not pointwise: a 3x3 stem, a strided
1x1) becomes the 16-bit matmul over its windows (`graphopt.precision_window`): x permuted to
NHWC, its windows gathered as 16-bit bit patterns [N, OH, OW, KH*KW*C], the op with those as
its (already rounded) input, the result permuted back.

With `embeddings`, a gather `take(table, idx, axis=0)` of a constant fp32 [V, D] table of at
least 1 MiB (`compress/int4/embedding.py`) gathers 16-bit rows and widens them (exact).

The kernel emitted is the portable one (`graphopt.precision_ops.portable_kernel`, carrying its
spec); a target stage (`materialize-precision`) replaces it with a kernel for its instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt.binding_graph import shape_dims
from graphopt.compress.common.layers import bound_constants, find_layers
from graphopt.compress.int4.embedding import embedding_table, find_tables
from graphopt.compress.precision.layers import depthwise, pointwise, supported, window
from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.precision_depthwise import DepthwiseSpec
from graphopt.precision_depthwise import portable_kernel as depthwise_kernel
from graphopt.precision_ops import (
    ATTENTION_ATTR,
    PRECISIONS,
    PrecisionMatmulSpec,
    portable_kernel,
    to_bits,
    widen_kernel,
)
from graphopt.precision_window import PAD_BITS, Window, window_bits_kernel, window_weight


@register_pass
class LowerPrecision(GraphPass):
    """Constant-weight matmuls -> 16-bit weight ops (bf16 / fp16 weights, fp32 sums)."""

    name = "lower-precision"

    @dataclass(frozen=True)
    class Options:
        precision: str = "bf16"  # bf16 | fp16
        skip: str = ""  # ":"-separated layer names kept fp32
        embeddings: bool = False  # also 16-bit embedding tables (take of a constant >= 1 MiB)
        depthwise: bool = False  # also depthwise convs (static shapes)
        windows: bool = False  # also full convs of static shapes (3x3 stem, strided 1x1)
        # mark the module so the target's precision-attention pass puts the fused attention
        # groups (made later by fuse) on its 16-bit attention kernel where it has one
        attention: bool = False

    def run(self, mod: tvm.IRModule) -> PassResult:
        o = self.options
        if o.precision not in PRECISIONS:
            raise PipelineError(
                f"lower-precision: precision must be one of {', '.join(PRECISIONS)}, "
                f"not {o.precision!r}"
            )
        skip = set(filter(None, o.skip.split(":")))
        todo = {
            ly.var: ly
            for ly in find_layers(mod["main"])
            if supported(ly, o.depthwise, o.windows) and ly.name not in skip
        }
        stats = {
            "matmuls": sum(ly.kind == "matmul" for ly in todo.values()),
            "pointwise_convs": sum(pointwise(ly) for ly in todo.values()),
            "depthwise_convs": sum(depthwise(ly) for ly in todo.values()),
            "window_convs": sum(window(ly) for ly in todo.values()),
        }
        if o.attention:
            mod = mod.with_attr(ATTENTION_ATTR, o.precision)
        tables = bound_constants(mod["main"]) if o.embeddings else None
        if not todo and not (tables is not None and find_tables(mod["main"], 1)):
            return PassResult(mod, o.attention, {**stats, "embeddings": 0})
        work = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)  # the builder edits it
        rewriter = _Rewriter(work, todo, o.precision, tables)
        new_func = rewriter.visit_expr(mod["main"])
        stats["embeddings"] = rewriter.tables
        new = rewriter.builder_.get()
        new["main"] = relax.analysis.remove_all_unused(new_func)
        new = relax.transform.DeadCodeElimination()(new)
        return PassResult(new, True, stats)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces each planned matmul binding by the 16-bit op."""

    def __init__(self, mod: tvm.IRModule, todo: dict, precision: str, consts) -> None:
        super().__init__(mod)
        self.todo, self.precision, self.consts = todo, precision, consts
        self.kernels: dict[PrecisionMatmulSpec | DepthwiseSpec, relax.GlobalVar] = {}
        self.tables = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        """A gather from a large constant table: the 16-bit rows, widened to fp32."""
        table = embedding_table(call, self.consts, 1) if self.consts is not None else None
        if table is None:
            return super().visit_call_(call)
        self.tables += 1
        idx = self.visit_expr(call.args[1])
        bits = relax.const(to_bits(table, self.precision))
        rows = self.builder_.emit(R.take(bits, idx, axis=0, mode=call.attrs.mode))
        widen = widen_kernel(shape_dims(call), self.precision)  # symbolic dims by name
        widen = self.builder_.add_func(widen, "widen16")
        return relax.call_tir(widen, [rows], relax.TensorType(call.ty.shape, "float32"))

    def _kernel(self, spec: PrecisionMatmulSpec) -> relax.GlobalVar:
        if spec not in self.kernels:
            self.kernels[spec] = self.builder_.add_func(portable_kernel(spec), "matmul16")
        return self.kernels[spec]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.todo:
            super().visit_var_binding_(binding)
            return
        layer = self.todo[binding.var]
        if depthwise(layer) or window(layer):
            call = self._depthwise(layer) if depthwise(layer) else self._window(layer)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, call))
            return
        x = self.visit_expr(layer.call.args[0])
        w = layer.weight
        if layer.kind == "conv2d":  # [N, C, H, W] -> [N, H, W, C] @ W^T [C, O] -> back
            x = self.builder_.emit(R.permute_dims(x, [0, 2, 3, 1]))
            w = np.ascontiguousarray(w[:, :, 0, 0].T)
        spec = PrecisionMatmulSpec(shape_dims(x), int(w.shape[1]), self.precision)
        out_shape = [*x.ty.shape.values[:-1], spec.n]  # symbolic dims as the graph has them
        call = relax.call_tir(
            self._kernel(spec),
            relax.Tuple([x, relax.const(to_bits(w, self.precision))]),
            relax.TensorType(out_shape, "float32"),
        )
        if layer.kind == "conv2d":
            call = R.permute_dims(self.builder_.emit(call), [0, 3, 1, 2])
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))

    def _window(self, layer) -> relax.Expr:
        """[N, C, H, W] -> [N, H, W, C], its windows as bits, the 16-bit matmul, NCHW."""
        x = self.builder_.emit(R.permute_dims(self.visit_expr(layer.call.args[0]), [0, 2, 3, 1]))
        a = layer.call.attrs
        win = Window(
            tuple(shape_dims(x)),
            tuple(layer.weight_shape[2:]),
            tuple(int(v) for v in a.strides),
            tuple(int(v) for v in a.padding),
            tuple(int(v) for v in a.dilation),
        )
        gather = self.builder_.add_func(window_bits_kernel(win, self.precision), "window16")
        patches_type = relax.TensorType(win.patches_shape, "uint16")
        pad = relax.const(PAD_BITS)
        patches = self.builder_.emit(relax.call_tir(gather, [x, pad], patches_type))
        w = window_weight(layer.weight)
        spec = PrecisionMatmulSpec(win.patches_shape, int(w.shape[1]), self.precision, x_bits=True)
        call = relax.call_tir(
            self._kernel(spec),
            relax.Tuple([patches, relax.const(to_bits(w, self.precision))]),
            relax.TensorType(spec.out_shape, "float32"),
        )
        return self.builder_.normalize(R.permute_dims(self.builder_.emit(call), [0, 3, 1, 2]))

    def _depthwise(self, layer) -> relax.Expr:
        """[N, C, H, W] -> [N, H, W, C], the 16-bit depthwise op, back to NCHW."""
        x = self.builder_.emit(R.permute_dims(self.visit_expr(layer.call.args[0]), [0, 2, 3, 1]))
        a = layer.call.attrs
        w = np.ascontiguousarray(layer.weight[:, 0].transpose(1, 2, 0))  # [KH, KW, C]
        spec = DepthwiseSpec(
            tuple(shape_dims(x)),
            (int(w.shape[0]), int(w.shape[1])),
            tuple(int(v) for v in a.strides),
            tuple(int(v) for v in a.padding),
            self.precision,
        )
        if spec not in self.kernels:
            self.kernels[spec] = self.builder_.add_func(depthwise_kernel(spec), "depthwise16")
        call = relax.call_tir(
            self.kernels[spec],
            relax.Tuple([x, relax.const(to_bits(w, self.precision))]),
            relax.TensorType(spec.out_shape, "float32"),
        )
        return self.builder_.normalize(R.permute_dims(self.builder_.emit(call), [0, 3, 1, 2]))
