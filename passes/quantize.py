"""Insert int8 quantize/dequantize (QDQ) around conv2d and matmul layers with constant weights.

Static mode (default) takes calibrated activation ranges from a JSON file written by
`graphopt.compress.int8.calibrate` (`quantize{ranges=r.json}`), so the pass stays a pure IR->IR pass
usable in text pipelines. Dynamic mode (`quantize{mode=dynamic}`) needs no ranges: activations
are quantized at run time from their own max |x| (transformer matmuls). `skip=conv2d_3:matmul_0`
keeps named layers in fp32 (what `--max-drop` uses). Layer names: `graphopt.compress.common.layers`.
Large embedding tables (a gather from an fp32 constant) become int8 rows with one scale per row
(`graphopt.compress.int8.embedding`, static and dynamic modes); `embeddings=false` keeps them fp32.

QDQ form (the contract with `lower-int8`; `graphopt.compress.int8.qdq` emits it):
    activation, static:   q  = R.quantize(x, s, zp, axis=-1, out_dtype=D)        D: int8 | uint8
                          xf = R.dequantize(q, s, zp, axis=-1, out_dtype="float32")
                          s an fp32 scalar constant, zp a scalar constant of dtype D; the range
                          always contains 0 (zero padding is exact). Affine: zp may be nonzero.
    activation, dynamic:  a = R.max(R.abs(x)); a = R.maximum(a, 1e-8); s = R.divide(a, 127.0)
                          then the two ops above with that run-time s and zp = R.const(0, "int8").
                          granularity=row: a = R.reshape(R.max(R.abs(x), axis=-1), (rows,)),
                          one scale per row of x [1.., rows, K], zp int8 zeros [rows], and
                          quantize/dequantize along axis = ndim - 2 (per-tensor if x has other
                          leading dims > 1).
    weight:               wf = R.dequantize(wq, s_w, zp_w, axis=A, out_dtype="float32")
                          wq an int8 constant in [-127, 127], symmetric: zp_w int8 zeros;
                          per-channel: s_w fp32 vector (one per output channel) and zp_w an
                          int8 zero vector of the same length; per-tensor: scalar s_w, zp_w.
                          conv2d OIHW: A = 0; matmul W [K, N]: A = 1.
    op:                   R.nn.conv2d(xf, wf, <the original attrs>) or R.matmul(xf, wf); the
                          original bias add / relu / clip that followed stay as they were.
Imported QDQ models (`mode=imported`): the graph passes fold DequantizeLinear(int8 weight) into
an fp32 constant; for layers whose input is already quantize -> dequantize with constant scalar
parameters, the pass recovers the int8 weight and per-channel scales from that constant (exactly,
or the layer is left alone) and re-emits the weight form above; the activation pair stays as
TVM's importer made it (scalar scale, axis=1, any zero point). Recovered weights may hold -128.
Rounding is round-half-to-even in both quantize (TVM's legalization) and the numpy references.
Static mode shares one activation QDQ per tensor among the quantized layers and joins that
read it with the same parameters. Joins (residual adds,
`graphopt.compress.common.layers.find_joins`, with an "add" entry in the ranges file;
`joins=false` leaves them fp32) get QDQ on both operands and on their result:
    join:                 y = R.add(dequantize(qa, sa, za), dequantize(qb, sb, zb))
                          yq = R.quantize(y, so, zo)   and the users read dequantize(yq, so, zo)
so a conv before the add requantizes into qa and the block stays int8 through the add. One QDQ
per tensor: a layer's input range where a layer reads it, else the join's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from graphopt import _tvm
from graphopt.compress.common.errors import CalibrationError
from graphopt.compress.common.layers import (
    Join,
    Layer,
    find_joins,
    find_layers,
    quantized_inputs,
)
from graphopt.compress.int8.embedding import quantize_embeddings
from graphopt.compress.int8.qdq import (
    act_qparams,
    emit_act_qdq,
    emit_dynamic_qdq,
    recover_int8_weight,
    weight_dequantize,
    weight_qparams,
)
from graphopt.compress.int8.ranges import read_ranges
from graphopt.pass_infra import GraphPass, PassResult, register_pass


@register_pass
class Quantize(GraphPass):
    """Insert int8 QDQ around conv2d/matmul with constant weights (static ranges or dynamic)."""

    name = "quantize"

    @dataclass(frozen=True)
    class Options:
        ranges: str = ""  # JSON file of calibrated activation ranges (static mode)
        mode: str = "static"  # static | dynamic | imported
        per_channel: bool = True
        act_dtype: str = "int8"  # int8 | uint8 (static mode)
        skip: tuple[str, ...] = ()  # layer names kept in fp32
        granularity: str = "tensor"  # dynamic mode: tensor | row (one scale per row/token)
        embeddings: bool = True  # gathers from fp32 tables >= 1 MiB -> int8 rows + row scales
        joins: bool = True  # static mode: QDQ residual adds too (blocks stay int8 end to end)

    def run(self, mod: tvm.IRModule) -> PassResult:
        o = self.options
        if o.mode not in ("static", "dynamic", "imported"):
            raise CalibrationError(
                f"quantize: mode must be static, dynamic or imported, not '{o.mode}'"
            )
        if o.act_dtype not in ("int8", "uint8"):
            raise CalibrationError(f"quantize: act_dtype must be int8 or uint8, not {o.act_dtype}")
        if o.granularity not in ("tensor", "row"):
            raise CalibrationError(
                f"quantize: granularity must be tensor or row, not {o.granularity}"
            )
        if o.mode == "static" and not o.ranges:
            raise CalibrationError("quantize: static mode needs ranges=FILE (from calibration)")
        ranges = read_ranges(Path(o.ranges)) if o.mode == "static" else {}
        layers = find_layers(mod["main"])
        plan: dict[str, Layer] = {}
        skipped = 0
        imported = quantized_inputs(mod["main"], layers) if o.mode == "imported" else set()
        weights: dict = {}
        for layer in layers:
            if layer.name in o.skip:
                skipped += 1
                continue
            if o.mode == "imported":
                rec = recover_int8_weight(layer.weight, layer.weight_axis)
                if layer.name not in imported or rec is None:
                    skipped += 1
                    continue
                weights[layer.name] = rec
            if o.mode == "static":
                entry = ranges.get(layer.name)
                if entry is None:
                    skipped += 1
                    continue
                if list(entry["weight_shape"]) != layer.weight_shape:
                    raise CalibrationError(
                        f"quantize: ranges file {o.ranges} does not match this graph (layer "
                        f"{layer.name} has weight {layer.weight_shape}, the file says "
                        f"{entry['weight_shape']}); calibrate the same graph"
                    )
            plan[layer.name] = layer
        joins = []
        if o.mode == "static" and o.joins:  # a join is a unit of its own, like a layer
            joins = [
                j
                for j in find_joins(mod["main"])
                if ranges.get(j.name, {}).get("kind") == "add" and j.name not in o.skip
            ]
        stats = {"quantized": len(plan), "skipped": skipped}
        if joins:
            stats["joins"] = len(joins)
        new = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        if plan or joins:
            new["main"] = _Rewriter(plan, ranges, o, weights, joins).rewrite(mod["main"])
        if (
            o.embeddings and o.mode != "imported"
        ):  # int8 tables, graphopt/compress/int8/embedding.py
            new["main"], tables = quantize_embeddings(new["main"])
            if tables:
                stats["embedding_tables"] = len(tables)
        if not plan and not joins and "embedding_tables" not in stats:
            return PassResult(mod, False, stats)
        return PassResult(new, not _tvm.structural_equal(new, mod), stats)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, plan: dict[str, Layer], ranges: dict, options, weights, joins) -> None:
        super().__init__()
        self.weights = weights
        self.by_call = [(layer.call, layer) for layer in plan.values()]
        self.ranges = ranges
        self.o = options
        self.joins = {j.var: j for j in joins}
        # One range per tensor, so each is quantized once and its producer can requantize into
        # it: a layer's input range where a layer reads the tensor, else the join's (minmax:
        # `calibrate.JOIN_METHOD`) for the operands only joins read (a projection's output).
        self.tensor_ranges: dict = {}
        if options.mode == "static":
            for layer in plan.values():
                if isinstance(layer.data, relax.Var):
                    self.tensor_ranges.setdefault(layer.data, ranges[layer.name]["input"])
        for j in joins:
            entry = ranges[j.name]
            for var, key in zip(j.tensors, ("input", "input_b", "output")):
                self.tensor_ranges.setdefault(var, entry[key])
        # tensor (var) -> (ActQuant, its dequantized var): one QDQ per tensor and parameters.
        self.shared: dict = {}

    def rewrite(self, func: relax.Function) -> relax.Function:
        return self.visit_expr(func)

    def visit_dataflow_block_(self, block):
        self.shared = {}  # a dataflow var is not visible outside its block
        return super().visit_dataflow_block_(block)

    def visit_binding_block_(self, block):
        self.shared = {}
        return super().visit_binding_block_(block)

    def _layer(self, call: relax.Call) -> Layer | None:
        for orig, layer in self.by_call:
            if orig.same_as(call):
                return layer
        return None

    def _qdq(self, data: relax.Expr, lo: float, hi: float) -> relax.Expr:
        """dequantize(quantize(data)) with the range's parameters, shared per tensor."""
        q = act_qparams(lo, hi, self.o.act_dtype)
        if isinstance(data, relax.Var):
            hit = self.shared.get(data)
            if hit is not None and hit[0] == q:
                return hit[1]
        xf = emit_act_qdq(self.builder_, data, q)
        if isinstance(data, relax.Var):
            self.shared[data] = (q, xf)
        return xf

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        join: Join | None = self.joins.get(binding.var)
        if join is None:
            super().visit_var_binding_(binding)
            return
        a, b = (self.visit_expr(arg) for arg in join.call.args)
        af = self._qdq(a, *self.tensor_ranges[join.call.args[0]])
        bf = self._qdq(b, *self.tensor_ranges[join.call.args[1]])
        value = self.builder_.normalize(relax.op.add(af, bf))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, value))
        # Users of the join read its requantized result (the next block's layers and joins).
        self._qdq(binding.var, *self.tensor_ranges[binding.var])

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        layer = self._layer(call)
        if layer is None:
            return super().visit_call_(call)
        data = self.visit_expr(call.args[0])
        if self.o.mode == "imported":  # input already QDQ: restore the int8 weight only
            wq, s_w = self.weights[layer.name]
            wf = self.builder_.emit(weight_dequantize(wq, s_w, layer.weight_axis))
            return relax.Call(call.op, [data, wf], call.attrs, call.ty_args)
        if self.o.mode == "dynamic":
            xf = emit_dynamic_qdq(self.builder_, data, self.o.granularity == "row")
        else:
            lo, hi = self.tensor_ranges.get(call.args[0], self.ranges[layer.name]["input"])
            xf = self._qdq(data, lo, hi)
        wq, s_w = weight_qparams(layer.weight, layer.weight_axis, self.o.per_channel)
        wf = self.builder_.emit(weight_dequantize(wq, s_w, layer.weight_axis))
        return relax.Call(call.op, [xf, wf], call.attrs, call.ty_args)
