"""Pipeline text: parsing, round-trips, presets, and errors that say what is wrong."""

from __future__ import annotations

import pytest

from graphopt.errors import PipelineError
from graphopt.pass_infra import GraphPass, make_pass, register_pass, registered_passes
from graphopt.pipeline import (
    PRESETS,
    PassSpec,
    canonical_text,
    format_pipeline,
    instantiate,
    parse_pipeline,
)


@pytest.mark.parametrize(
    "text",
    [
        "fold-constants",
        "fold-constants,dce",
        "tvm.FuseOps{fuse_opt_level=2},dce",
        "tvm.LegalizeOps{enable_warning=true},cse",
        "",
    ],
)
def test_round_trip(text):
    specs = parse_pipeline(text)
    assert format_pipeline(specs) == text
    assert parse_pipeline(format_pipeline(specs)) == specs
    assert canonical_text(instantiate(specs)) == text


def test_whitespace_is_normalized():
    assert format_pipeline(
        parse_pipeline(" fold-constants , tvm.FuseOps{ fuse_opt_level = 2 } ")
    ) == ("fold-constants,tvm.FuseOps{fuse_opt_level=2}")


def test_options_parsed_in_order():
    (spec,) = parse_pipeline("tvm.FuseOps{fuse_opt_level=2}")
    assert spec == PassSpec("tvm.FuseOps", (("fuse_opt_level", "2"),))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_expand_and_resolve(preset):
    specs = parse_pipeline(preset)
    assert format_pipeline(specs) == PRESETS[preset]
    instantiate(specs)  # every name in every preset is registered


def test_presets_grow():
    names = [set(s.name for s in parse_pipeline(p)) for p in ("O0", "O1", "O2", "O3")]
    assert names[0] <= names[1] <= names[2] <= names[3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,,b", "empty pass name"),
        ("fold-constants{", "unclosed"),
        ("fold-constants}", "unmatched"),
        ("fold-constants{a{b}}", "nested"),
        ("tvm.FuseOps{fuse_opt_level}", "is not key=value"),
        ("tvm.FuseOps{x=1,x=2}", "given twice"),
        ("fold-constants{}x", "text after"),
        ("9lives", "bad pass name"),
        ("O2{x=1}", "takes no options"),
    ],
)
def test_malformed_text(text, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_every_unknown_name_reported_at_once():
    with pytest.raises(PipelineError) as info:
        instantiate(parse_pipeline("bogus,fold-constants,tvm.NoSuchPass,dce{level=3}"))
    text = str(info.value)
    assert "unknown pass 'bogus'" in text
    assert "unknown TVM pass 'tvm.NoSuchPass'" in text
    assert "pass 'dce' has no option level" in text


def test_unknown_tvm_option():
    with pytest.raises(PipelineError, match="has no option nope"):
        make_pass("tvm.FuseOps", {"nope": "1"})


def test_registry_rejects_bad_and_duplicate_names():
    class Bad(GraphPass):
        """Bad name."""

        name = "Bad_Name"

    with pytest.raises(ValueError, match="kebab-case"):
        register_pass(Bad)

    class Dup(GraphPass):
        """Duplicate of dce."""

        name = "dce"

    with pytest.raises(ValueError, match="registered twice"):
        register_pass(Dup)


def test_registry_requires_summary():
    class NoDoc(GraphPass):
        name = "no-doc-pass"

    NoDoc.__doc__ = None
    with pytest.raises(ValueError, match="docstring"):
        register_pass(NoDoc)


def test_every_registered_pass_has_summary_and_kebab_name():
    passes = registered_passes()
    assert {"fold-constants", "fold-batchnorm", "cse", "dce"} <= set(passes)
    for name, cls in passes.items():
        assert cls.summary(), name
        assert cls.__module__.rsplit(".", 1)[-1] == name.replace("-", "_"), (
            f"pass {name} must live in passes/{name.replace('-', '_')}.py"
        )


def test_passes_package_cannot_be_imported_twice():
    import importlib.util
    import pathlib

    init = pathlib.Path(__file__).resolve().parents[1] / "passes" / "__init__.py"
    spec = importlib.util.spec_from_file_location("passes", init)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match="graphopt.passes"):
        spec.loader.exec_module(module)
