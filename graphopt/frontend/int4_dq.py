"""Blocked int4 weights in plain ONNX (opset 21): `DequantizeLinear(W4, scale[, zp], axis=0,
block_size=B)` of a constant INT4/UINT4 [K, N] feeding only `MatMul(A, W)`'s second input,
rewritten into the com.microsoft `MatMulNBits` node it is (`converters/int4.py` imports that
onto graphopt's int4 op), so the weights stay 4-bit, recovered exactly:

    INT4  q in [-8, 7], zp (default 0)  ->  nibble q + 8, zero point zp + 8 (none: symmetric)
    UINT4 q in [0, 15], zp (default 0)  ->  nibble q, zero point zp

and (q - zp) * s is unchanged. Other uses of int4 DequantizeLinear are left to the importer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .quantized import MS_DOMAIN

_FOUR_BIT = {TensorProto.INT4: 8, TensorProto.UINT4: 0}  # added to reach unsigned nibbles


def _pack(u: np.ndarray) -> np.ndarray:
    """uint8 [.., L] nibbles -> [.., ceil(L / 2)] bytes, element 2i in the low nibble."""
    if u.shape[-1] % 2:
        u = np.concatenate([u, np.zeros((*u.shape[:-1], 1), np.uint8)], axis=-1)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def _nbits_inputs(w, scale, zp, block: int, offset: int):
    """(B [N, blocks, block / 2], scales [N * blocks], zero points or None) for MatMulNBits."""
    k, n = w.shape
    blocks = -(-k // block)
    u = np.zeros((n, blocks * block), np.uint8)
    u[:, :k] = (w.astype(np.int16) + offset).T
    b = _pack(u).reshape(n, blocks, block // 2)
    scales = np.ascontiguousarray(scale.reshape(blocks, n).T).reshape(-1)
    if zp is None and offset == 8:
        return b, scales, None  # symmetric: MatMulNBits' default zero point is 8
    z = np.zeros((blocks, n), np.int16) if zp is None else zp.astype(np.int16)
    return b, scales, _pack((z.reshape(blocks, n).T + offset).astype(np.uint8))


def rewrite_blocked_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every DequantizeLinear(4-bit constant) -> MatMul pair as MatMulNBits."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    replaced = []
    for dq in list(graph.node):
        new = _rewrite_one(dq, inits, users)
        if new is not None:
            replaced.append((dq, *new))
    if not replaced:
        return model
    for dq, mm, node, tensors in replaced:
        graph.node.remove(dq)
        at = list(graph.node).index(mm)
        graph.node.remove(mm)
        graph.node.insert(at, node)
        graph.initializer.extend(tensors)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _rewrite_one(dq, inits: dict, users: dict):
    """(the MatMul, the MatMulNBits node, its new initializers) for one DequantizeLinear, or
    None when it is not a blocked 4-bit constant feeding one MatMul's weight."""
    if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    w = inits.get(dq.input[0])
    if w is None or w.data_type not in _FOUR_BIT or len(w.dims) != 2:
        return None
    block, axis = int(_attr(dq, "block_size", 0)), int(_attr(dq, "axis", 1))
    scale = inits.get(dq.input[1]) if len(dq.input) > 1 else None
    zp_name = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
    zp = inits.get(zp_name) if zp_name else None
    uses = users.get(dq.output[0], [])
    if block <= 0 or axis not in (0, -2) or scale is None or (zp_name and zp is None):
        return None
    if len(uses) != 1 or uses[0].op_type != "MatMul" or list(uses[0].input)[1] != dq.output[0]:
        return None
    k, n = (int(d) for d in w.dims)
    zero = None if zp is None else numpy_helper.to_array(zp)
    b, s, z = _nbits_inputs(
        numpy_helper.to_array(w), numpy_helper.to_array(scale), zero, block, _FOUR_BIT[w.data_type]
    )
    base = dq.output[0]
    tensors = [
        numpy_helper.from_array(b, f"{base}_nbits_b"),
        numpy_helper.from_array(s, f"{base}_nbits_s"),
    ]
    names = [uses[0].input[0], tensors[0].name, tensors[1].name]
    if z is not None:
        tensors.append(numpy_helper.from_array(z, f"{base}_nbits_z"))
        names.append(tensors[2].name)
    node = helper.make_node(
        "MatMulNBits",
        names,
        list(uses[0].output),
        name=f"{base}_nbits",
        domain=MS_DOMAIN,
        K=k,
        N=n,
        bits=4,
        block_size=block,
    )
    return uses[0], node, tensors
