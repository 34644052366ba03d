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
