"""Block magnitude pruning of an ONNX model's 1x1 convs and Gemm / MatMul layers, so the
benchmarks have a sparse model to compile (accuracy is not the point here).

Blocks are `block` consecutive output channels of `depth` consecutive input channels (16 x 1:
what `sparsify` looks for; 16 x 4: what the int8 sparse kernels skip, and 16 x 1 blocks too);
in each layer the blocks with the smallest L2 norms are zeroed until `sparsity` of them are.
Channel counts that are no multiple of the block end in shorter blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def prune_blocks(w: np.ndarray, sparsity: float, block: int, depth: int = 1) -> np.ndarray:
    """W [O, I] with the `sparsity` fraction of its block x depth blocks (smallest norms)
    zeroed."""
    o, i = w.shape
    padded = np.zeros((o + -o % block, i + -i % depth), w.dtype)
    padded[:o, :i] = w
    blocks = padded.reshape(padded.shape[0] // block, block, -1, depth)
    norms = np.sqrt((blocks.astype(np.float64) ** 2).sum(axis=(1, 3)))  # [O / block, I / depth]
    order = np.argsort(norms, axis=None, kind="stable")
    keep = np.ones(norms.size, bool)
    keep[order[: round(sparsity * norms.size)]] = False
    mask = np.repeat(np.repeat(keep.reshape(norms.shape), block, axis=0), depth, axis=1)
    return (w * mask[:o, :i]).astype(w.dtype)


def _as_oi(node, w: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """The layer's weight as [out, in] (and whether that is the stored orientation)."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":
        group = attrs["group"].i if "group" in attrs else 1
        return (w.reshape(w.shape[0], -1), True) if w.shape[2:] == (1, 1) and group == 1 else None
    if node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i:
        return w, True
    return (w.T, False) if w.ndim == 2 else None


def prune_model(src: Path, dst: Path, sparsity: float, block: int = 16, depth: int = 1) -> int:
    """Write `src` with its 1x1 convs and Gemm / MatMul weights block-pruned; returns how many
    layers were pruned."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    pruned = 0
    for node in model.graph.node:
        tensor = inits.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in ("Conv", "Gemm", "MatMul") or tensor is None:
            continue
        w = numpy_helper.to_array(tensor)
        layer = _as_oi(node, w)
        if layer is None:
            continue
        oi, stored = layer
        new = prune_blocks(oi, sparsity, block, depth)
        new = new.reshape(w.shape) if stored else new.T
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), tensor.name))
        pruned += 1
    onnx.save(model, str(dst))
    return pruned


def weight_bytes(path: Path) -> int:
    """Bytes of the model's initializers (its weights as stored, zeros included)."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
