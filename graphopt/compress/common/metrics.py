"""Accuracy metrics every compression method scores with: what `--max-drop` budgets.

`Metric.score(ref, got)` compares a compressed model's outputs with the original's on the
same feeds, in points (higher is better; drop = original - compressed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CalibrationError


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)


def cosines(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> np.ndarray:
    """Cosine per sample (row of the flattened first output)."""
    out = []
    for r, g in zip(ref, got):
        r2, g2 = r.reshape(r.shape[0], -1), g.reshape(g.shape[0], -1)
        num = np.sum(r2 * g2, axis=1, dtype=np.float64)
        den = np.linalg.norm(r2, axis=1) * np.linalg.norm(g2, axis=1)
        out.extend(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0))
    return np.array(out)


@dataclass
class Metric:
    """The accuracy metric --max-drop budgets, in points: higher is better, drop = fp32 - int8.

    labelled accuracy (%) when labels exist; else top-1 agreement with fp32 (%) for
    classifier-shaped outputs [batch, classes]; else 100 * min cosine vs fp32. Embeddings are
    [batch, dim] too: ask for `min_cosine` explicitly (`--quant-metric cosine`).
    """

    KINDS = ("auto", "accuracy", "top1_agreement", "min_cosine")

    kind: str
    labels: np.ndarray | None = None

    @staticmethod
    def choose(
        ref_first: Sequence[np.ndarray], labels: np.ndarray | None, kind: str = "auto"
    ) -> Metric:
        if kind == "accuracy" and labels is None:
            raise CalibrationError("metric accuracy needs labels (y in the --eval .npz)")
        if kind not in ("auto", "accuracy"):
            return Metric(kind)
        if labels is not None:
            return Metric("accuracy", np.asarray(labels).ravel())
        o = ref_first[0]
        if o.ndim == 2 and o.shape[1] > 1:
            return Metric("top1_agreement")
        return Metric("min_cosine")

    def score(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
        if self.kind == "accuracy":
            pred = np.concatenate([g.reshape(g.shape[0], -1).argmax(1) for g in got])
            return 100.0 * float(np.mean(pred == self.labels[: len(pred)]))
        if self.kind == "top1_agreement":
            return 100.0 * float(np.mean(top1_agrees(ref, got)))
        return 100.0 * float(cosines(ref, got).min())

    def bound(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
        """The best score `got` can still reach, given the outputs of the first len(got) of
        the feeds `ref` holds: every metric here is per sample, and a sample scored cannot
        be won back (the search stops scoring a candidate once it cannot meet the budget)."""
        if self.kind == "min_cosine":
            return 100.0 * float(cosines(ref[: len(got)], got).min())
        rows = [g.reshape(g.shape[0], -1) for g in got]
        seen, total = sum(len(r) for r in rows), sum(len(r) for r in ref)
        if self.kind == "accuracy":
            hits = int(np.sum(np.concatenate([r.argmax(1) for r in rows]) == self.labels[:seen]))
        else:
            hits = int(np.sum(top1_agrees(ref[: len(got)], got)))
        return 100.0 * (hits + total - seen) / total


# A sample whose original top-2 scores lie closer than this fraction of its score range is a
# tie: any change to the weights flips it, one layer at 50 dB SQNR included (EfficientNet-Lite0
# has such a photo among its calibration crops: top-2 gap 0.03% of the range, next 0.85%).
# Counting it would make a budget below one sample unreachable with any layer compressed.
TIE = 1e-3


def top1_agrees(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> np.ndarray:
    """Per sample: the compressed model's top-1 class is the original's, or ties with it (its
    original score within TIE of the range below the maximum)."""
    r = np.concatenate([x.reshape(x.shape[0], -1) for x in ref]).astype(np.float64)
    g = np.concatenate([x.reshape(x.shape[0], -1) for x in got])
    picked = r[np.arange(len(r)), g.argmax(1)]
    top, span = r.max(1), r.max(1) - r.min(1)
    return (r.argmax(1) == g.argmax(1)) | (top - picked <= TIE * span)
