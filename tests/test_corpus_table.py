"""bench/results/corpus.md has a row for every model of the real-model corpus (fast: reads the
corpus list and the table; compiles nothing)."""

from __future__ import annotations

from pathlib import Path

from bench.models.corpus import CORPUS

TABLE = Path(__file__).resolve().parents[1] / "bench" / "results" / "corpus.md"


def test_results_table_lists_every_corpus_model():
    rows = {
        ln.split("|")[1].strip() for ln in TABLE.read_text().splitlines() if ln.startswith("| ")
    }
    assert set(CORPUS) <= rows, sorted(set(CORPUS) - rows)
    for name, entry in CORPUS.items():
        if entry.unsupported:
            row = next(ln for ln in TABLE.read_text().splitlines() if ln.startswith(f"| {name} "))
            assert f"{entry.unsupported} [" in row and "clean error" in row
