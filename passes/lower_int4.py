"""Matmuls with constant fp32 weights -> int4-weight matmul ops; large embedding tables -> int4.

Each `matmul(x, W)` (x fp32 [.., K], W a constant [K, N]: the layers of
`compress/common/layers.py`) and each 1x1 conv (stride 1, no padding, not grouped:
`compress/int4/layers.py`; its NCHW input moved channels-last around the op) becomes one
`call_tir` of the int4 op (`graphopt.int4_ops`) with
the packed nibbles, the per-group scales and zero points as its constants: the fp32 weight
leaves the graph. Weights come from `weights` (the .npz `--quantize int4` writes, GPTQ's
for instance: `compress/int4/store.py`; checked against the graph's shapes) or are quantized
here by round-to-nearest with `group` and `symmetric`. A weight with an AWQ input scale gets
`x * act_scale` in front of its op.

The 1x1 convs named in `int8_convs` (those `--max-drop` keeps int8) stay fp32 here but become
matmuls of their pixels, `reshape(permute(x, NHWC), [1, B*H*W, C]) @ W [C, N]`, so that the
dynamic per-row int8 flow (`quantize{mode=dynamic, granularity=row}`, `lower-int8`), which
takes matmuls only and rows of a [1, rows, K] input, runs them with one scale per pixel.

With `embeddings`, a gather `take(table, idx, axis=0)` of a constant fp32 [V, D] table of at
least 1 MiB (`compress/int4/embedding.py`) becomes the gather of its packed rows and their
scales, unpacked and dequantized by elementwise ops (only the gathered rows are dequantized).

With `int8_windows`, every other conv (depthwise, stem: `window_convs`) not in `skip` runs on
its weight stored int8 with one scale per output channel, fp32 activations
(`graphopt.w8_conv_ops`).

With `act=int8` the ops are W4A8 (`graphopt.int4_a8_ops`): each row of x quantized to int8 at
run time, integer dot products per group. The kernel emitted is the portable one
(`graphopt.int4_ops.portable_kernel`, carrying its spec); a target stage
(`materialize-int4`) replaces it with a kernel for its instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from graphopt.binding_graph import shape_dims
from graphopt.compress.common.layers import bound_constants
from graphopt.compress.int4.embedding import embedding_table
from graphopt.compress.int4.layers import int4_layers, weight_matrix, window_convs
from graphopt.compress.int4.quant import Int4Weight, quantize_rtn
from graphopt.compress.int4.store import load_weights
from graphopt.errors import PipelineError
from graphopt.int4_ops import Int4MatmulSpec, portable_kernel
from graphopt.pass_infra import GraphPass, PassResult, register_pass
from graphopt.w8_conv_ops import quantize_conv_weight, w8_conv_kernel

ACTS = ("float32", "int8")


@register_pass
class LowerInt4(GraphPass):
    """Constant-weight matmuls -> int4-weight ops (packed nibbles, per-group scales)."""

    name = "lower-int4"

    @dataclass(frozen=True)
    class Options:
        group: int = 32  # weights per scale along K: 32, 64 or 128
        symmetric: bool = True  # zero point 8 (not stored); false: a uint8 zero per group
        weights: str = ""  # .npz of precomputed int4 weights (GPTQ); else round-to-nearest
        skip: str = ""  # ":"-separated layer names kept fp32
        embeddings: bool = True  # also int4 embedding tables (take of a constant >= 1 MiB)
        clip: bool = False  # round-to-nearest: search each group's range (quant.clip_search)
        scale_dtype: str = "float32"  # round-to-nearest: float32 | float16 scales
        embedding_group: int = 0  # group of the embedding rows (0: `group`)
        act: str = "float32"  # float32: W4 x fp32 ops | int8: W4A8 (rows quantized at run time)
        int8_convs: str = ""  # ":"-separated 1x1 convs rewritten as fp32 matmuls (for int8)
        # the other convs (depthwise, stem: not int4 layers) with int8 weights (w8_conv_ops)
        int8_windows: bool = False

    def run(self, mod: tvm.IRModule) -> PassResult:
        o = self.options
        if o.group <= 0 or o.group % 2:
            raise PipelineError(f"lower-int4: group must be a positive even number, not {o.group}")
        if o.act not in ACTS:
            raise PipelineError(f"lower-int4: act must be one of {', '.join(ACTS)}, not {o.act!r}")
        stored = load_weights(o.weights)
        skip = set(filter(None, o.skip.split(":")))
        as_matmul = set(filter(None, o.int8_convs.split(":")))
        func = mod["main"]
        todo = {}
        for layer in int4_layers(func):
            if layer.name in as_matmul and layer.kind == "conv2d":
                todo[layer.var] = (layer, None)
            elif layer.name not in skip:
                todo[layer.var] = (layer, self._weight(layer, stored))
        windows = {ly.var: ly for ly in window_convs(func, skip)} if o.int8_windows else {}
        rewriter = _Rewriter(mod, todo, bound_constants(func), o, windows)
        new_func = rewriter.visit_expr(func)
        convs = sum(q is None for _ly, q in todo.values())
        stats = {"int4_matmuls": len(todo) - convs, "int4_embeddings": len(rewriter.tables)}
        stats["conv_matmuls"] = convs
        stats["int8_window_convs"] = len(windows)
        if not todo and not rewriter.tables and not windows:
            return PassResult(mod, False, stats)
        new = rewriter.builder_.get()
        new["main"] = relax.analysis.remove_all_unused(new_func)
        new = relax.transform.DeadCodeElimination()(new)
        return PassResult(new, True, stats)

    def _weight(self, layer, stored: dict) -> Int4Weight:
        w = weight_matrix(layer)
        if layer.name not in stored:
            o = self.options
            return quantize_rtn(w, o.group, o.symmetric, o.clip, scale_dtype=o.scale_dtype)
        q = stored[layer.name]
        k, n = w.shape
        if q.k != k or q.n != n:
            raise PipelineError(
                f"lower-int4: weights file has {layer.name} for K={q.k}, N={q.n}; the graph's "
                f"is K={k}, N={n} (a file from another model?)"
            )
        return q


def _zeros(q: Int4Weight) -> np.ndarray:
    return np.zeros(1, np.uint8) if q.zeros is None else q.zeros


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces each planned matmul binding by the int4 op and each large gather by int4 rows."""

    def __init__(self, mod: tvm.IRModule, todo: dict, consts: dict, options, windows) -> None:
        super().__init__(mod)
        self.todo, self.consts, self.options = todo, consts, options
        self.windows = windows
        self.kernels: dict[Int4MatmulSpec, relax.GlobalVar] = {}
        self.tables: list[list[int]] = []

    def _kernel(self, spec: Int4MatmulSpec) -> relax.GlobalVar:
        if spec not in self.kernels:
            self.kernels[spec] = self.builder_.add_func(portable_kernel(spec), "int4_matmul")
        return self.kernels[spec]

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.windows:
            layer, bb = self.windows[binding.var], self.builder_
            call = self._w8_conv(layer, self.visit_expr(layer.call.args[0]))
            bb.emit_normalized(relax.VarBinding(binding.var, bb.normalize(call)))
            return
        if binding.var not in self.todo:
            super().visit_var_binding_(binding)
            return
        layer, q = self.todo[binding.var]
        bb, conv = self.builder_, layer.kind == "conv2d"
        x = self.visit_expr(layer.call.args[0])
        if q is None:
            call = self._conv_matmul(layer, x)
            bb.emit_normalized(relax.VarBinding(binding.var, bb.normalize(call)))
            return
        if conv:  # NCHW -> NHWC: the input channels are K
            x = bb.emit(R.permute_dims(x, [0, 2, 3, 1]))
        if q.act_scale is not None:  # AWQ: the weights were quantized for x * act_scale
            x = bb.emit(R.multiply(x, relax.const(q.act_scale.astype(np.float32))))
        spec = Int4MatmulSpec(
            shape_dims(x), q.n, q.group, q.symmetric, scale_dtype=str(q.scales.dtype),
            act=self.options.act,
        )  # fmt: skip
        consts = [relax.const(a) for a in (q.packed, q.scales, _zeros(q))]
        out_shape = [*x.ty.shape.values[:-1], q.n]  # symbolic dims as the graph has them
        call = relax.call_tir(
            self._kernel(spec), relax.Tuple([x, *consts]), relax.TensorType(out_shape, "float32")
        )
        if conv:
            call = R.permute_dims(bb.emit(call), [0, 3, 1, 2])
        bb.emit_normalized(relax.VarBinding(binding.var, bb.normalize(call)))

    def _w8_conv(self, layer, x: relax.Expr) -> relax.Expr:
        """A window conv on its int8 weight (`graphopt.w8_conv_ops`)."""
        a = layer.call.attrs
        wq, scale = quantize_conv_weight(layer.weight)
        kernel = w8_conv_kernel(
            tuple(layer.call.args[0].ty.shape.values),
            tuple(wq.shape),
            tuple(int(v) for v in a.strides),
            tuple(int(v) for v in a.padding),
            tuple(int(v) for v in a.dilation),
            int(a.groups),
        )
        gv = self.builder_.add_func(kernel, "w8_conv2d")
        args = relax.Tuple([x, relax.const(wq), relax.const(scale)])
        return relax.call_tir(gv, args, relax.TensorType(layer.call.ty.shape, "float32"))

    def _conv_matmul(self, layer, x: relax.Expr) -> relax.Expr:
        """A 1x1 conv (NCHW) as the fp32 matmul of its pixels [1, B*H*W, C] @ W [C, N]."""
        bb = self.builder_
        b, c, h, w = layer.call.args[0].ty.shape.values  # symbolic dims stay expressions
        rows = bb.emit(R.reshape(bb.emit(R.permute_dims(x, [0, 2, 3, 1])), [1, b * h * w, c]))
        weight = weight_matrix(layer)
        y = bb.emit(R.matmul(rows, relax.const(weight)))
        y = bb.emit(R.reshape(y, [b, h, w, weight.shape[1]]))
        return R.permute_dims(y, [0, 3, 1, 2])

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        o = self.options
        group = o.embedding_group or o.group
        table = embedding_table(call, self.consts, group) if o.embeddings else None
        if table is None:
            return super().visit_call_(call)
        self.tables.append(list(table.shape))
        return self._int4_gather(table, self.visit_expr(call.args[1]), call, group)

    def _int4_gather(self, table, idx: relax.Expr, call: relax.Call, group: int) -> relax.Expr:
        """take(packed rows) -> nibbles -> (q - z) * s per group of each gathered row."""
        o, bb = self.options, self.builder_
        q = quantize_rtn(table.T, group, o.symmetric, o.clip, scale_dtype=o.scale_dtype)
        vocab, dim = table.shape
        mode = call.attrs.mode
        out_shape = list(call.ty.shape.values)  # symbolic dims (a sequence) as they are
        lead = out_shape[:-1]
        rows = bb.emit(R.take(relax.const(q.packed), idx, axis=0, mode=mode))
        lo = R.bitwise_and(rows, relax.const(np.uint8(15)))
        hi = R.right_shift(rows, relax.const(np.uint8(4)))
        codes = R.reshape(R.stack([lo, hi], axis=-1), [*lead, dim // group, group])
        codes = R.astype(codes, "float32")
        if q.zeros is None:
            centred = R.subtract(codes, relax.const(np.float32(8)))
        else:
            z = bb.emit(R.take(relax.const(q.zeros[..., None]), idx, axis=0, mode=mode))
            centred = R.subtract(codes, R.astype(z, "float32"))
        s = bb.emit(R.take(relax.const(q.scales[..., None]), idx, axis=0, mode=mode))
        if q.scales.dtype != np.float32:
            s = R.astype(s, "float32")
        return R.reshape(R.multiply(centred, s), out_shape)
