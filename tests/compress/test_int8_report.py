"""The int8 compile line counts the layers that got no integer kernel: `--quant-mode dynamic`
lowers matmuls only, so a CNN's convolutions stay fake-quant and the line says how many."""

from __future__ import annotations

import graphopt
from graphopt.compress.int8.flow import QuantOptions, format_report
from graphopt.compress.int8.method import Int8
from graphopt.models import DEFAULT_MODEL


def test_report_counts_fake_quant_layers(tmp_path):
    art = graphopt.compile(
        DEFAULT_MODEL, tmp_path / "q", compression=[Int8(QuantOptions(mode="dynamic"))]
    )
    q = art.manifest["quantization"]
    left = q["pass_stats"]["lower-int8"]["left"]
    assert left == q["int8_layers"] - 1 > 0  # every conv; the classifier is a matmul
    assert f"({left} as fake-quant: no integer kernel for them)" in format_report(q)
