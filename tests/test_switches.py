"""The switch table (aiotrace_boot/switches.py) is the one list of switches: everything that
lists them agrees with it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import aiotrace
from aiotrace import catalogue, registry
from aiotrace_boot import switches
from aiotrace_boot.switches import INSTALL_KEYWORDS, SWITCHES

DOCS = Path(__file__).resolve().parent.parent / "docs" / "switching-on.md"


def test_the_docs_table_is_the_generated_one() -> None:
    # Regenerate with: python scripts/switch_table.py
    assert switches.markdown_table() in DOCS.read_text(encoding="utf-8")


def test_install_takes_the_table_keywords_with_the_table_defaults() -> None:
    for function in (aiotrace.install, registry.selected):
        parameters = inspect.signature(function).parameters
        assert tuple(parameters) == INSTALL_KEYWORDS
        for keyword, parameter in parameters.items():
            assert parameter.default == switches.by_keyword(keyword).default, keyword


def test_the_instrumentor_accepts_the_install_keywords() -> None:
    # opentelemetry-instrumentation is optional (the lowest_otel sessions run without it).
    pytest.importorskip("opentelemetry.instrumentation")
    from aiotrace import instrumentation

    assert frozenset(INSTALL_KEYWORDS) == instrumentation._INSTALL_OPTIONS


def test_every_group_a_switch_names_is_in_the_catalogue() -> None:
    for switch in SWITCHES:
        assert set(switch.groups) <= set(catalogue.PATCH_NAMES), switch


def test_opt_in_groups_are_those_whose_switch_is_off_by_default() -> None:
    off_by_default = {
        group
        for s in SWITCHES
        if s.keyword and s.groups and s.default == s.off
        for group in s.groups
    }
    assert off_by_default == catalogue.OPT_IN


def test_a_config_gives_install_the_default_selection() -> None:
    import aiotrace_boot

    config = aiotrace_boot.configuration({"AIOTRACE_ENABLE": "1"}, print)
    arguments, unknown = config.install_arguments(catalogue.PATCH_NAMES)
    assert unknown == []
    assert registry.selected(**arguments) == registry.selected()
    assert registry.selected() == frozenset(catalogue.PATCH_NAMES) - catalogue.OPT_IN


def test_the_unknown_patch_name_message_is_the_same_everywhere() -> None:
    expected = switches.unknown_patch_names(["nope"], catalogue.PATCH_NAMES)
    with pytest.raises(aiotrace.UnknownPatchError) as raised:
        aiotrace.install(exclude=["nope"])
    assert str(raised.value) == expected
