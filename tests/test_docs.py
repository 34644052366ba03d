"""The docs match the code: generated tables are current, links resolve, no lab notebook."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphopt import pass_docs
from graphopt.cli import main

ROOT = Path(__file__).resolve().parent.parent
USER_DOCS = [
    ROOT / "README.md",
    ROOT / "passes" / "README.md",
    ROOT / "targets" / "README.md",
    ROOT / "bench" / "models" / "FINDINGS.md",
    *sorted((ROOT / "docs").glob("*.md")),
]


@pytest.mark.parametrize("path,command,generator", pass_docs.GENERATED, ids=lambda x: str(x))
def test_generated_block_is_current(path, command, generator):
    text = (ROOT / path).read_text()
    assert pass_docs.BEGIN.format(command=command) in text, f"{path} lost its markers"
    assert text == pass_docs.expected(path, command, generator, ROOT), (
        f"{path} is stale: run `python -m graphopt.pass_docs --write`"
    )


def test_cli_prints_the_pass_table(capsys):
    assert main(["passes", "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert printed == pass_docs.passes_markdown()
    assert printed in (ROOT / "passes" / "README.md").read_text()


def test_pass_table_lists_every_registered_pass_with_its_options():
    from graphopt.pass_infra import registered_passes

    table = pass_docs.passes_markdown()
    for name, cls in registered_passes().items():
        assert f"| `{name}` | {cls.summary().replace('|', chr(92) + '|')} |" in table
    assert "`max_elements=16777216` (int)" in table  # fold-constants' frozen default


def test_operator_table_lists_every_supported_op():
    from graphopt.frontend.support import supported_op_types

    table = pass_docs.operators_markdown()
    cells = set(re.findall(r"[A-Za-z0-9]+", table))
    assert supported_op_types() <= cells
    assert f"{len(supported_op_types())} operator types" in table


def test_replace_block_keeps_the_hand_written_text():
    begin = pass_docs.BEGIN.format(command="cmd")
    text = f"intro\n{begin}\nold\n{pass_docs.END}\noutro\n"
    assert pass_docs.replace_block(text, "cmd", "new\n") == (
        f"intro\n{begin}\nnew\n{pass_docs.END}\noutro\n"
    )
    with pytest.raises(ValueError):
        pass_docs.replace_block("no markers", "cmd", "x")


# Development history belongs in git, not in the user's docs (issue 15).
_HISTORY = re.compile(
    r"\bsession \d|\bround \d|tried (this session )?and not kept|what changed|"
    r"\bthis session\b|\bprevious session\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_history(doc):
    hits = [
        f"{doc.name}:{i}: {line.strip()[:80]}"
        for i, line in enumerate(doc.read_text().splitlines(), 1)
        if _HISTORY.search(line)
    ]
    assert not hits, "\n".join(hits)


_MD_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#([^)]*))?\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_docs_resolve(doc):
    broken = []
    for link, anchor in _MD_LINK.findall(doc.read_text()):
        if link.startswith(("http://", "https://")):
            continue
        target = doc.parent / link
        if not target.is_file():
            broken.append(link)
        elif anchor and anchor not in _anchors(target):
            broken.append(f"{link}#{anchor}")
    assert not broken, f"{doc.relative_to(ROOT)} has broken links: {broken}"
