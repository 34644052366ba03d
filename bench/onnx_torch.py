"""An ONNX graph as a PyTorch module, for timing PyTorch (eager and torch.compile) on exactly
the model graphopt compiled, on a GPU host that has neither onnx2torch nor torchvision.

Covers the operators of MobileNetV2, EfficientNet-Lite0 and all-MiniLM-L6-v2 (after the
frontend's ONNX clean-up folded their shape sub-graphs) and the generated test models (conv
nets, MLPs, a transformer block); anything else raises NotImplementedError naming the
operator. `Cast` to a float type gives the module's float type (`float_dtype`), so a half or
bf16 module stays in one type. Needs only onnx, numpy and torch (no graphopt, no TVM).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x, w, b=None, *, pads=(0, 0, 0, 0), strides=(1, 1), dilations=(1, 1), group=1, **_):
    if pads[: len(pads) // 2] != pads[len(pads) // 2 :]:
        x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
        pads = (0, 0, 0, 0)
    return F.conv2d(x, w, b, tuple(strides), tuple(pads[:2]), tuple(dilations), group)


def _gemm(a, b, c=None, *, transA=0, transB=0, alpha=1.0, beta=1.0, **_):
    a = a.t() if transA else a
    b = b.t() if transB else b
    y = alpha * (a @ b)
    return y + beta * c if c is not None else y


def _pool(kind):
    def run(x, *, kernel_shape, strides=None, pads=(0, 0, 0, 0), **_):
        fn = F.max_pool2d if kind == "max" else F.avg_pool2d
        return fn(x, tuple(kernel_shape), tuple(strides or kernel_shape), tuple(pads[:2]))

    return run


def _batch_norm(x, g, b, mean, var, *, epsilon=1e-5, **_):
    return F.batch_norm(x, mean, var, g, b, False, 0.0, epsilon)


def _layer_norm(x, g, b=None, *, axis=-1, epsilon=1e-5, **_):
    return F.layer_norm(x, x.shape[axis:], g, b, epsilon)


def _reshape(x, shape, **_):
    dims = [int(d) for d in shape]
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _clip(x, lo=None, hi=None, *, min=None, max=None, **_):  # noqa: A002 - ONNX names
    lo = lo if lo is not None else min
    hi = hi if hi is not None else max
    return torch.clamp(x, None if lo is None else float(lo), None if hi is None else float(hi))


def _pad(x, pads, value=None, *, mode="constant", **_):
    half = len(pads) // 2
    flat = [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])]
    return F.pad(x, flat, mode, 0.0 if value is None else float(value))


def _reduce(fn):
    def run(x, axes=None, *, keepdims=1, **attrs):
        axes = axes if axes is not None else attrs.get("axes")
        dims = tuple(range(x.dim())) if axes is None else tuple(int(a) for a in axes)
        return fn(x, dims, bool(keepdims))

    return run


def _unsqueeze(x, axes=None, **attrs):
    for axis in sorted(int(a) for a in (axes if axes is not None else attrs["axes"])):
        x = x.unsqueeze(axis)
    return x


def _gather(x, indices, *, axis=0, **_):
    if not torch.is_tensor(indices):
        indices = torch.as_tensor(indices, device=x.device)
    return torch.index_select(x, axis, indices.reshape(-1)).reshape(
        *x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]
    )


OPS = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a, b, **_: a @ b,
    "Add": lambda a, b, **_: a + b,
    "Sub": lambda a, b, **_: a - b,
    "Mul": lambda a, b, **_: a * b,
    "Div": lambda a, b, **_: a / b,
    "Relu": lambda x, **_: F.relu(x),
    "Clip": _clip,
    "Sigmoid": lambda x, **_: torch.sigmoid(x),
    "HardSwish": lambda x, **_: F.hardswish(x),
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5, **_: torch.clamp(alpha * x + beta, 0, 1),
    "Erf": lambda x, **_: torch.erf(x),
    "Tanh": lambda x, **_: torch.tanh(x),
    "Softmax": lambda x, axis=-1, **_: torch.softmax(x, axis),
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda x, **_: x.mean(dim=(2, 3), keepdim=True),
    "ReduceMean": lambda x, axes=None, keepdims=1, **_: x.mean(
        dim=tuple(axes), keepdim=bool(keepdims)
    ),
    "Flatten": lambda x, axis=1, **_: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Reshape": _reshape,
    "Transpose": lambda x, perm, **_: x.permute(*perm),
    "Identity": lambda x, **_: x,
    "Pad": _pad,
    "Gather": _gather,
    "GatherElements": lambda x, i, *, axis=0, **_: torch.gather(x, axis, i),
    "Unsqueeze": _unsqueeze,
    "Expand": lambda x, shape, **_: x.expand(*[int(d) for d in shape]),
    "And": lambda a, b, **_: a & b,
    "Where": lambda c, a, b, **_: torch.where(c, a, b),
    "IsNaN": lambda x, **_: torch.isnan(x),
    "ReduceSum": _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k)),
    "ReduceL2": _reduce(lambda x, d, k: x.norm(dim=d, keepdim=k)),
    "Cast": lambda x, *, to, **_: x.to(_TORCH_TYPES[to]),
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_TORCH_TYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.BOOL: torch.bool,
}
# Inputs read as plain values (shapes, pads, axes), not tensors on the GPU.
HOST_INPUTS = {
    "Reshape": (1,),
    "Clip": (1, 2),
    "Pad": (1, 2),
    "Unsqueeze": (1,),
    "Expand": (1,),
    "ReduceSum": (1,),
    "ReduceL2": (1,),
}


class OnnxModule(torch.nn.Module):
    """Runs the ONNX graph node by node with torch operators; weights are buffers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        unknown = sorted({n.op_type for n in graph.node} - set(OPS) - {"Constant"})
        if unknown:
            raise NotImplementedError(f"no torch mapping for {', '.join(unknown)}")
        self.host: dict[str, np.ndarray] = {}
        self.names: dict[str, str] = {}
        for i, init in enumerate(graph.initializer):
            value = numpy_helper.to_array(init)
            self.host[init.name] = value
            self.register_buffer(f"w{i}", torch.from_numpy(value.copy()))
            self.names[init.name] = f"w{i}"
        for node in graph.node:  # Constant nodes become weights too
            if node.op_type == "Constant":
                value = numpy_helper.to_array(_attrs(node)["value"])
                self.host[node.output[0]] = value
                self.register_buffer(f"c{len(self.names)}", torch.from_numpy(value.copy()))
                self.names[node.output[0]] = f"c{len(self.names)}"
        self.nodes = [
            (n.op_type, self._sources(n), n.output[0], _attrs(n))
            for n in graph.node
            if n.op_type != "Constant"
        ]
        self.inputs = [i.name for i in graph.input if i.name not in self.host]
        self.float_dtype = torch.float32  # what Cast to a float type gives (set for half)
        self.outputs = [o.name for o in graph.output]

    def _sources(self, node: onnx.NodeProto) -> list[tuple[str, object]]:
        """Per input: ("none", None), ("value", plain Python value: shapes, clip bounds) or
        ("env", name). Plain values keep numpy out of forward, which torch.compile traces."""
        out: list[tuple[str, object]] = []
        for i, name in enumerate(node.input):
            if not name:
                out.append(("none", None))
            elif i in HOST_INPUTS.get(node.op_type, ()) and name in self.host:
                out.append(("value", self.host[name].tolist()))
            else:
                out.append(("env", name))
        return out

    def forward(self, *args):
        env = dict(zip(self.inputs, args))
        for name, buf in self.names.items():
            env[name] = getattr(self, buf)
        for op, sources, out, attrs in self.nodes:
            vals = [env[p] if kind == "env" else p for kind, p in sources]
            if op == "Cast" and attrs["to"] in _FLOAT_TYPES:
                env[out] = vals[0].to(self.float_dtype)
                continue
            env[out] = OPS[op](*vals, **attrs)
        result = [env[o] for o in self.outputs]
        return result[0] if len(result) == 1 else tuple(result)
