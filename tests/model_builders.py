"""Small ONNX models (opset 17) built with onnx.helper, with seeded random weights.

Every builder returns a checked `onnx.ModelProto`. Weights come from `numpy.random.default_rng`
with a fixed seed, so the same call always builds the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FLOAT = TensorProto.FLOAT


class GraphBuilder:
    """Collects nodes and seeded initializers; `model()` turns them into a checked model."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value, prefix: str = "c", dtype=None) -> str:
        """Add an initializer holding `value`; returns its name."""
        name = self.fresh(prefix)
        arr = np.asarray(value, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, shape: Sequence[int], scale: float = 0.3, prefix: str = "w") -> str:
        """A float32 initializer with normal values times `scale`."""
        return self.const(self.rng.standard_normal(shape).astype(np.float32) * scale, prefix)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str | None = None,
        domain: str = "",
        **attrs,
    ) -> str:
        """Append a one-output node; returns the name of its output."""
        node_name = name or self.fresh(op_type.lower())
        out = f"{node_name}_out"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=node_name, domain=domain, **attrs)
        )
        return out

    def model(
        self,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[tuple[str, str, Sequence[int | str]]],
        name: str,
        extra_opsets: Sequence[tuple[str, int]] = (),
    ) -> onnx.ModelProto:
        """Build the model; `outputs` holds (graph output name, tensor feeding it, shape)."""
        out_infos = []
        for out_name, tensor, shape in outputs:
            self.nodes.append(
                helper.make_node("Identity", [tensor], [out_name], name=f"{out_name}_identity")
            )
            out_infos.append(_value_info(out_name, shape))
        graph = helper.make_graph(self.nodes, name, list(inputs), out_infos, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        opsets += [helper.make_opsetid(d, v) for d, v in extra_opsets]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="graphopt-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    # Layers built from the primitives above.

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        *,
        group: int = 1,
        pad: int = 0,
        stride: int = 1,
        bias: bool = True,
    ) -> str:
        w = self.weight([c_out, c_in // group, k, k], scale=1.0 / math.sqrt(c_in // group * k * k))
        ins = [x, w] + ([self.weight([c_out], 0.1, "b")] if bias else [])
        return self.op(
            "Conv", ins, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, group=group
        )

    def batch_norm(self, x: str, c: int) -> str:
        gamma = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32), "gamma")
        beta = self.weight([c], 0.1, "beta")
        mean = self.weight([c], 0.1, "mean")
        var = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32), "var")
        return self.op("BatchNormalization", [x, gamma, beta, mean, var], epsilon=1e-5)

    def linear(self, x: str, d_in: int, d_out: int) -> str:
        """MatMul + Add, as PyTorch exports nn.Linear."""
        y = self.op("MatMul", [x, self.weight([d_in, d_out], 1.0 / math.sqrt(d_in))])
        return self.op("Add", [y, self.weight([d_out], 0.1, "b")])

    def gelu_erf(self, x: str) -> str:
        """0.5 * x * (1 + erf(x / sqrt(2))), the exact GELU as exported by PyTorch."""
        e = self.op("Erf", [self.op("Div", [x, self.const(np.float32(math.sqrt(2.0)))])])
        one_plus = self.op("Add", [e, self.const(np.float32(1.0))])
        return self.op("Mul", [self.op("Mul", [x, one_plus]), self.const(np.float32(0.5))])

    def layer_norm(self, x: str, d: int) -> str:
        gamma = self.const(self.rng.uniform(0.5, 1.5, d).astype(np.float32), "ln_g")
        return self.op(
            "LayerNormalization", [x, gamma, self.weight([d], 0.1, "ln_b")], axis=-1, epsilon=1e-5
        )


def _value_info(name: str, shape: Sequence[int | str], elem=FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def cnn(seed: int = 0, batch: int | str = 1, size: int | str = 16) -> onnx.ModelProto:
    """(a) Conv+bias, BatchNormalization, Relu, MaxPool (twice), GlobalAveragePool, Gemm.
    `batch` and `size` (height and width) may be dim_param names (symbolic)."""
    g = GraphBuilder(seed)
    h = g.op("Relu", [g.batch_norm(g.conv("x", 3, 8, 3, pad=1), 8)])
    h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("Relu", [g.batch_norm(g.conv(h, 8, 16, 3, pad=1), 16)])
    h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h])], axis=1)
    logits = g.op("Gemm", [h, g.weight([10, 16], 0.25), g.weight([10], 0.1, "b")], transB=1)
    x = _value_info("x", [batch, 3, size, size])
    return g.model([x], [("logits", logits, [batch, 10])], "cnn")


def mobilenet_block(seed: int = 1) -> onnx.ModelProto:
    """(b) Depthwise conv (group=C), ReLU6 as Clip(0, 6), pointwise conv, HardSwish, and a
    squeeze-excite gate with Sigmoid."""
    g = GraphBuilder(seed)
    c, c_out = 8, 16
    h = g.batch_norm(g.conv("x", c, c, 3, group=c, pad=1, bias=False), c)
    h = g.op("Clip", [h, g.const(np.float32(0.0)), g.const(np.float32(6.0))])
    h = g.op("HardSwish", [g.conv(h, c, c_out, 1)])
    gate = g.op("Sigmoid", [g.conv(g.op("GlobalAveragePool", [h]), c_out, c_out, 1)])
    y = g.op("Mul", [h, gate])
    return g.model(
        [_value_info("x", [1, c, 12, 12])], [("y", y, [1, c_out, 12, 12])], "mobilenet_block"
    )


def mlp(seed: int = 2) -> onnx.ModelProto:
    """(c) MatMul+Add layers with Relu and Erf-GELU, then Softmax."""
    g = GraphBuilder(seed)
    h = g.op("Relu", [g.linear("x", 32, 64)])
    h = g.gelu_erf(g.linear(h, 64, 48))
    probs = g.op("Softmax", [g.linear(h, 48, 10)], axis=-1)
    return g.model([_value_info("x", [4, 32])], [("probs", probs, [4, 10])], "mlp")


TRANSFORMER = {"batch": 1, "seq": 8, "dim": 32, "heads": 4, "ffn": 64}


def transformer_block(
    seed: int = 3, seq: int | str | None = None, attn_output: bool = True
) -> onnx.ModelProto:
    """(d) Pre-norm transformer block: LayerNormalization, multi-head self-attention with an
    additive mask input, residual adds, Erf-GELU feed-forward. Two outputs: the block's output
    `y` and the attention probabilities `attn` (unless not `attn_output`). `seq` a name: a
    symbolic sequence length (the reshapes then copy dims with 0, as exporters write them)."""
    g = GraphBuilder(seed)
    b, s, d, nh, ffn = (TRANSFORMER[k] for k in ("batch", "seq", "dim", "heads", "ffn"))
    s = s if seq is None else seq
    hd = d // nh
    lead = [0, 0] if isinstance(s, str) else [b, s]
    heads_shape = g.const([*lead, nh, hd], "heads_shape", np.int64)

    def to_heads(t: str, perm: list[int]) -> str:
        return g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=perm)

    h = g.layer_norm("x", d)
    q = to_heads(g.linear(h, d, d), [0, 2, 1, 3])
    k_t = to_heads(g.linear(h, d, d), [0, 2, 3, 1])
    v = to_heads(g.linear(h, d, d), [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k_t]), g.const(np.float32(1.0 / math.sqrt(hd)))])
    probs = g.op("Softmax", [g.op("Add", [scores, "mask"])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const([*lead, -1], "merge_shape", np.int64)])
    x1 = g.op("Add", ["x", g.linear(ctx, d, d)])
    ff = g.linear(g.gelu_erf(g.linear(g.layer_norm(x1, d), d, ffn)), ffn, d)
    y = g.op("Add", [x1, ff])
    inputs = [_value_info("x", [b, s, d]), _value_info("mask", [b, 1, s, s])]
    outputs = [("y", y, [b, s, d]), ("attn", probs, [b, nh, s, s])]
    return g.model(inputs, outputs[: 2 if attn_output else 1], "transformer_block")


def causal_mask(seq: int = TRANSFORMER["seq"], batch: int = TRANSFORMER["batch"]) -> np.ndarray:
    """Additive causal mask: 0 where attention is allowed, -1e4 above the diagonal."""
    upper = np.triu(np.ones((seq, seq), dtype=bool), k=1)
    mask = np.where(upper, np.float32(-1e4), np.float32(0.0))
    return np.broadcast_to(mask, (batch, 1, seq, seq)).astype(np.float32)


def dynamic_batch(seed: int = 4) -> onnx.ModelProto:
    """(e) An MLP whose input batch dimension is the symbol 'N'."""
    g = GraphBuilder(seed)
    y = g.linear(g.op("Relu", [g.linear("x", 16, 24)]), 24, 4)
    return g.model([_value_info("x", ["N", 16])], [("y", y, ["N", 4])], "dynamic_batch")


UNSUPPORTED_DOMAIN = "com.example"


def unsupported_ops(seed: int = 5) -> onnx.ModelProto:
    """(f) Two op types TVM cannot import: custom-domain com.example.Foo (nodes 'foo1', 'foo2')
    and Det (node 'det'), between ordinary supported ops (a quantize/dequantize pair)."""
    g = GraphBuilder(seed)
    scale, zero = g.const(np.float32(0.05)), g.const(np.uint8(128))
    xq = g.op("QuantizeLinear", ["x", scale, zero], name="quant")
    y = g.op("DequantizeLinear", [xq, scale, zero], name="dequant")
    y = g.op("Det", [y], name="det")
    y = g.op("Foo", [y], name="foo1", domain=UNSUPPORTED_DOMAIN)
    y = g.op("Foo", [g.op("Relu", [y], name="relu")], name="foo2", domain=UNSUPPORTED_DOMAIN)
    return g.model(
        [_value_info("x", [1, 4, 8, 8])],
        [("y", y, [1, 4])],
        "unsupported_ops",
        extra_opsets=[(UNSUPPORTED_DOMAIN, 1)],
    )


def shape_subgraphs(seed: int = 6, constant_of_shape: bool = True) -> onnx.ModelProto:
    """(g) Shape arithmetic as PyTorch exports it: Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape, and Pad amounts computed from the input shape. With `constant_of_shape`, the zero
    pads and an added constant come from ConstantOfShape nodes (as in torch's F.pad export);
    without, they are plain initializers."""
    g = GraphBuilder(seed)
    i64 = np.int64
    shape = g.op("Shape", ["x"])
    batch = g.op(
        "Unsqueeze", [g.op("Gather", [shape, g.const(i64(0))], axis=0), g.const([0], dtype=i64)]
    )
    height = g.op("Gather", [shape, g.const(i64(2))], axis=0)
    p = g.op("Unsqueeze", [g.op("Div", [height, g.const(i64(6))]), g.const([0], dtype=i64)])
    if constant_of_shape:
        zeros2 = g.op(
            "ConstantOfShape",
            [g.const([2], dtype=i64)],
            value=helper.make_tensor("v", TensorProto.INT64, [1], [0]),
        )
    else:
        zeros2 = g.const([0, 0], dtype=i64)
    pads = g.op("Concat", [zeros2, p, p, zeros2, p, p], axis=0)
    h = g.op("Pad", ["x", pads, g.const(np.float32(0.0))], mode="constant")
    h = g.op("Relu", [g.conv(h, 4, 4, 3)])
    flat = g.op("Reshape", [h, g.op("Concat", [batch, g.const([-1], dtype=i64)], axis=0)])
    if constant_of_shape:
        half = g.op(
            "ConstantOfShape",
            [g.op("Shape", [flat])],
            value=helper.make_tensor("v", FLOAT, [1], [0.5]),
        )
    else:
        half = g.const(np.float32(0.5))
    y = g.linear(g.op("Add", [flat, half]), 4 * 6 * 6, 10)
    return g.model([_value_info("x", [1, 4, 6, 6])], [("y", y, [1, 10])], "shape_subgraphs")


SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "ConstantOfShape"}


def save(model: onnx.ModelProto, path) -> str:
    """Write `model` to `path`; returns the path as a string."""
    onnx.save_model(model, str(path))
    return str(path)


def sample_inputs(specs, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for these specs (name, shape, dtype); an input named 'mask' gets
    `causal_mask` of its shape, so attention models see a realistic additive mask."""
    from graphopt.inputs import random_inputs

    feeds = random_inputs(specs, seed=seed)
    for spec in specs:
        if spec.name == "mask":
            _, _, seq, _ = spec.shape
            feeds["mask"] = causal_mask(seq, spec.shape[0])
    return feeds


def leftovers(parent) -> list[str]:
    """Temporary or backup directories (`.NAME.tmp-*`, `.NAME.old-*`) left in `parent`."""
    return sorted(p.name for p in Path(parent).iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def expand_depthwise(
    seed: int = 7,
    residual: bool = True,
    batch: int | str = 1,
    size: int | str = 10,
    stride: int = 1,
) -> onnx.ModelProto:
    """(h) An inverted-residual block: 1x1 expand (half its channels 50x smaller, as batch-norm
    folding leaves MobileNets) -> Clip(0, 6) -> depthwise 3x3 -> 1x1 project, plus the input
    (a residual join): every piece int8 calibration treats specially. `size` (height and
    width) may be a dim_param name; `stride` 2 (the depthwise conv's) drops the join."""
    g = GraphBuilder(seed)
    c, e = 4, 8
    h = g.conv("x", c, e, 1)
    small = g.const(np.where(np.arange(e) < e // 2, 1.0, 0.02).astype(np.float32).reshape(e, 1, 1))
    h = g.op("Clip", [g.op("Mul", [h, small]), g.const(np.float32(0.0)), g.const(np.float32(6.0))])
    h = g.op(
        "Clip",
        [
            g.conv(h, e, e, 3, group=e, pad=1, stride=stride),
            g.const(np.float32(0.0)),
            g.const(np.float32(6.0)),
        ],
    )
    y = g.conv(h, e, c, 1)
    y = g.op("Add", [y, "x"]) if residual and stride == 1 else y
    x = _value_info("x", [batch, c, size, size])
    if stride == 1:
        out = size
    else:  # a symbolic size: the output's is left unnamed
        out = None if isinstance(size, str) else (size - 1) // stride + 1
    return g.model([x], [("y", y, [batch, c, out, out])], "expand_dw")


def single_matmul(w: np.ndarray, rows: int = 16) -> onnx.ModelProto:
    """y = x @ w for x [rows, K], the weight [K, N] an initializer: one int4-able layer."""
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# torchvision's MobileNetV2 table: expansion t, channels c, repeats n, first stride s.
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip


def embedding_matmul(seq: int | str = 16, seed: int = 5) -> onnx.ModelProto:
    """ids [1, seq] -> Gather(table [1024, 256], 1 MiB: an int4 embedding) -> MatMul -> y
    [1, seq, 32]. `seq` may be a dim_param name (symbolic)."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((1024, 256)).astype(np.float32)
    w = (rng.standard_normal((256, 32)) / 16).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"]),
            helper.make_node("MatMul", ["e", "w"], ["y"]),
        ],
        "embed",
        [_value_info("ids", [1, seq], TensorProto.INT64)],
        [_value_info("y", [1, seq, 32])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def mobilenet_v2_layers(size: int | str = 224, seed: int = 8) -> onnx.ModelProto:
    """(i) MobileNetV2's layers with random weights, batch norm folded into the convs as the
    exporters leave it (Conv + bias, Clip(0, 6)), residual adds, pooling and the classifier:
    the real model's kernels without its weight files. `size` may be a dim_param name."""
    g = GraphBuilder(seed)
    lo, hi = g.const(np.float32(0.0)), g.const(np.float32(6.0))

    def conv(x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1, act=True):
        y = g.conv(x, cin, cout, k, group=group, pad=(k - 1) // 2, stride=stride)
        return g.op("Clip", [y, lo, hi]) if act else y

    h, cin = conv("x", 3, 32, stride=2), 32
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            stride, hidden = (s if i == 0 else 1), cin * t
            y = conv(h, cin, hidden, k=1) if t != 1 else h
            y = conv(y, hidden, hidden, stride=stride, group=hidden)
            y = conv(y, hidden, c, k=1, act=False)
            h = g.op("Add", [h, y]) if stride == 1 and cin == c else y
            cin = c
    h = g.op("Flatten", [g.op("GlobalAveragePool", [conv(h, cin, 1280, k=1)])], axis=1)
    logits = g.op("Gemm", [h, g.weight([1000, 1280], 0.03), g.weight([1000], 0.1, "b")], transB=1)
    x = _value_info("x", [1, 3, size, size])
    return g.model([x], [("logits", logits, [1, 1000])], "mobilenet_v2_layers")
