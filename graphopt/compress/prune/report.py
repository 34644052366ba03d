"""The pruning entry of the manifest and its table: per layer sparsity and output error,
weights before and after."""

from __future__ import annotations

from .spec import PruneSpec


def layer_row(row: dict, reason: str) -> dict:
    """A layer left dense (skipped, pattern does not fit, or kept by the budget)."""
    keep = {k: row[k] for k in ("layer", "what", "weights") if k in row}
    errors = {k: v for k, v in row.items() if k.startswith("error_")}
    return {**keep, "status": "dense", "reason": reason, "zeros": 0, "sparsity": 0.0, **errors}


def size_summary(rows: list[dict], spec: PruneSpec) -> dict:
    """Weights of the prunable layers, their zeros after pruning, and fp32 bytes."""
    weights = sum(r["weights"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    return {
        "weights": weights,
        "zeros": zeros,
        "sparsity": round(zeros / weights, 4) if weights else 0.0,
        "fp32_bytes": 4 * weights,
        "nonzero_fp32_bytes": 4 * (weights - zeros),
        "pattern": spec.pattern,
    }


def _error(r: dict) -> str:
    if "error_sparsegpt" in r:
        return f"{r['error_magnitude']:.3g} -> {r['error_sparsegpt']:.3g}"
    return f"{r['error_magnitude']:.3g}" if "error_magnitude" in r else "-"


def _pass_stats(manifest: dict, name: str) -> dict | None:
    passes = manifest.get("report", {}).get("passes", [])
    return next((e["stats"] for e in passes if e["pass"] == name), None)


def storage_line(manifest: dict) -> str | None:
    """What the artifact stores for the pruned weights: the fp32 layers `sparsify` made
    block-sparse and the int8 layers `materialize-int8` did, with their bytes before and after;
    None when neither ran."""
    fp32 = _pass_stats(manifest, "sparsify")
    int8 = _pass_stats(manifest, "materialize-int8")
    parts = []
    int8_ran = int8 is not None and int8.get("kernels", 0) > 0
    if fp32 is not None and (fp32["layers_sparse"] or fp32["layers_dense"] or not int8_ran):
        parts.append(
            f"stored: {fp32['layers_sparse']} layer(s) block-sparse, their weights "
            f"{fp32['weight_bytes_dense']} B -> {fp32['weight_bytes_sparse']} B (values + "
            f"indices); {fp32['layers_dense']} candidate(s) above the density threshold stay "
            "dense"
        )
    if int8 is not None and int8.get("kernels", 0) and "layers_sparse" in int8:
        parts.append(
            f"stored: {int8['layers_sparse']} int8 layer(s) "
            f"block-sparse, {int8['sparse_bytes_dense']} B -> {int8['sparse_bytes_stored']} B; "
            f"{int8['layers_dense']} int8 layer(s) with zeros stay dense"
        )
    scattered = sum((s or {}).get("layers_scattered_zeros", 0) for s in (fp32, int8))
    if scattered:
        parts.append(
            f"note: {scattered} layer(s) at least half zeros stay dense: their zeros are not in "
            "whole blocks of output channels (16x1; int8 16x4), the only zeros the kernels "
            "skip (prune with --prune block=..., docs/SPARSITY.md)"
        )
    return "\n".join(parts) or None


def sparsity_line(manifest: dict) -> str | None:
    """`storage_line` for a model that came with zeros (no --prune): only when some layer
    went block-sparse or was left dense with many zeros."""
    stats = [_pass_stats(manifest, p) or {} for p in ("sparsify", "materialize-int8")]
    if any(s.get("layers_sparse") or s.get("layers_scattered_zeros") for s in stats):
        return storage_line(manifest)
    return None


def format_report(m: dict, storage: str | None = None) -> str:
    """The compile and report output: one row per layer, then the totals (and `storage`)."""
    from ...tables import format_table

    rows = [
        [
            r["layer"],
            r["what"],
            r["weights"],
            f"{100 * r['sparsity']:.1f}%",
            _error(r),
            r["status"] if r["status"] == "pruned" else f"dense ({r['reason']})",
        ]
        for r in m["layers"]
    ]
    o, s = m["settings"], m["size"]
    head = (
        f"pruning ({m['spec']}, {o['method']}): {m['pruned_layers']}/{len(m['layers'])} layers "
        "pruned"
    )
    cols = ["layer", "op", "weights", "zeros", "output error magnitude -> sparsegpt", "decision"]
    tail = (
        f"weights {s['weights']} ({s['fp32_bytes']} B fp32): {s['zeros']} zero "
        f"({100 * s['sparsity']:.1f}%), {s['weights'] - s['zeros']} nonzero "
        f"({s['nonzero_fp32_bytes']} B)"
    )
    if "accuracy" in m:
        a = m["accuracy"]
        tail += f"\n{a['metric']}: dense {a['dense']:.2f}, pruned {a['final']:.2f}"
        if "artifact" in a:
            tail += f", artifact {a['artifact']:.2f}"
    return "\n".join([head, format_table(cols, rows), tail, *([storage] if storage else [])])
