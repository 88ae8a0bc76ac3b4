"""The layout shows the flow (issue 27): one folder per stage, no circle, no arrow from an earlier
stage to a later one, no alias module, small modules and functions. The measures are those of
``benchmarks/code_measures.py`` (read from the source, nothing imported), asserted here."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import actstore

ROOT = Path(actstore.__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("code_measures", ROOT.parent / "benchmarks" / "code_measures.py")
measures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measures)


@pytest.fixture(scope="module")
def graph():
    return measures.import_graph(ROOT)


def test_no_import_circle(graph):
    assert measures.circles(graph) == []


def test_no_arrow_from_an_earlier_stage_to_a_later_one(graph):
    assert measures.arrows_up(graph) == []


def test_every_package_has_a_stage():
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    staged = {prefix for prefix, _ in measures.STAGES}
    assert [p for p in packages if p not in staged] == []


def test_at_most_ten_modules_at_the_top_level_and_no_alias_module():
    shape = measures.layout(ROOT)
    assert len(shape["top-level modules"]) <= measures.MAX_TOP_LEVEL_MODULES, shape["top-level modules"]
    assert shape["alias modules"] == []


def test_no_module_over_400_lines():
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > measures.MAX_MODULE_LINES]
    assert long == []


def test_no_function_over_60_lines_or_10_parameters():
    assert measures.oversized(ROOT) == []


def test_every_package_docstring_lists_its_modules():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        modules = [p.stem for p in init.parent.glob("*.py") if p.name != "__init__.py"]
        missing = [m for m in modules if m not in doc]
        assert missing == [], f"{init.parent.name}/__init__.py's docstring does not name {missing}"


def test_the_measures_see_an_arrow_up_and_a_circle():
    # the measures themselves can fail: an import from stats to evaluation is an arrow up,
    # and two modules importing each other are a circle
    graph = {"actstore.stats.streaming": {"actstore.evaluation.sweep"}, "actstore.evaluation.sweep": set()}
    assert measures.arrows_up(graph) == [("actstore.stats.streaming", "actstore.evaluation.sweep")]
    graph = {"actstore.a": {"actstore.b"}, "actstore.b": {"actstore.a"}}
    assert measures.circles(graph) == [["actstore.a", "actstore.b"]]
