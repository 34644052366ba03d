"""The accuracy metrics --max-drop budgets (graphopt/compress/common/metrics.py)."""

from __future__ import annotations

import numpy as np

from graphopt.compress.common.metrics import TIE, Metric, top1_agrees


def test_top1_agreement_counts_flips_but_not_ties():
    ref = np.array(
        [
            [0.0, 10.0, 9.0],  # clear winner, the compressed model picks another class: flip
            [0.0, 10.0, 10.0 - 0.5 * TIE * 10],  # top-2 within the tie margin: either agrees
            [0.0, 10.0, 10.0 - 2.0 * TIE * 10],  # just outside the margin: a flip
            [5.0, 1.0, 0.0],  # same class: agrees
        ]
    )
    got = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(top1_agrees([ref], [got]), [False, True, False, True])
    assert Metric("top1_agreement").score([ref[:2], ref[2:]], [got[:2], got[2:]]) == 50.0


def test_bound_is_the_best_score_still_reachable():
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(2, 5)) for _ in range(4)]  # 8 samples in 4 feeds
    flipped = [r[:, ::-1].copy() for r in ref]
    agree = Metric("top1_agreement")
    assert agree.bound(ref, ref[:2]) == 100.0
    first = agree.bound(ref, flipped[:1])
    assert first == 100.0 * (8 - int(np.sum(~top1_agrees(ref[:1], flipped[:1])))) / 8
    assert first >= agree.score(ref, flipped[:1] + ref[1:])  # the rest cannot win it back
    cos = Metric("min_cosine")
    assert cos.bound(ref, flipped[:1]) == cos.score(ref[:1], flipped[:1])
    labels = np.concatenate([r.argmax(1) for r in ref])
    acc = Metric("accuracy", labels)
    assert acc.bound(ref, ref[:3]) == 100.0
