"""bench.profile_layers pairs graphopt's kernels with onnxruntime's nodes layer by layer."""

from __future__ import annotations

import json

from bench.profile_layers import _short, aligned_rows, markdown


def _g(*names):
    return [{"kernel": n, "median_us": 10.0} for n in names]


def _o(*ops):
    return [{"node": f"/m/n{i}", "op": op, "median_us": 20.0} for i, op in enumerate(ops)]


def test_convs_and_matmuls_pair_and_the_rest_stand_alone():
    g = _g("transpose", "fused_conv2d_add", "fused_conv2d1_add", "mean", "fused_matmul_add")
    o = _o("Conv", "Conv", "GlobalAveragePool", "Flatten", "Gemm")
    rows = [(a and a["kernel"], b and b["op"]) for a, b in aligned_rows(g, o)]
    assert rows == [
        ("transpose", None),
        ("fused_conv2d_add", "Conv"),
        ("fused_conv2d1_add", "Conv"),
        ("mean", None),
        (None, "GlobalAveragePool"),
        (None, "Flatten"),
        ("fused_matmul_add", "Gemm"),
    ]


def test_unequal_counts_keep_every_entry_once():
    g, o = _g("fused_conv2d_a", "fused_conv2d_b"), _o("Conv")
    rows = aligned_rows(g, o)
    assert [a["kernel"] for a, _ in rows if a] == ["fused_conv2d_a", "fused_conv2d_b"]
    assert [b["op"] for _, b in rows if b] == ["Conv"]


def test_table_sums_and_ratio():
    result = {"model": "m", "runs": 3, "graphopt": _g("fused_conv2d_a"), "onnxruntime": _o("Conv")}
    machine = {"cpu": "cpu", "llvm_cpu": "x", "threads": 2, "date": "d", "spin_us": 200}
    text = markdown(result, machine)
    assert "| fused_conv2d_a" in text and "0.50" in text and "**10**" in text and "**20**" in text


def test_node_names_shorten():
    assert _short("/features/features.3/conv/conv.1/conv.1.2/Clip_output_0_nchwc") == (
        "features.3/conv/conv.1"
    )
    assert _short("ReorderOutput") == "ReorderOutput"


def test_results_land_as_json_and_markdown_side_by_side(tmp_path):
    from bench.writing import write_results

    write_results(tmp_path / "new", "layers_m", {"runs": 3}, "# table\n")
    assert json.loads((tmp_path / "new" / "layers_m.json").read_text()) == {"runs": 3}
    assert (tmp_path / "new" / "layers_m.md").read_text() == "# table\n"
