"""The one error tree and exit-code table (core/errors.py) and the README that documents it."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgerun.devices.inventory  # noqa: F401  (rooms' subclasses register themselves with the tree)
import edgerun.export  # noqa: F401
import edgerun.runtime.accuracy  # noqa: F401
import edgerun.runtime.optable  # noqa: F401
import edgerun.runtime.record  # noqa: F401
import edgerun.runtime.stats  # noqa: F401
import edgerun.store  # noqa: F401
from edgerun.core.errors import EXIT_MEANINGS, EdgerunError, ExitCode, all_error_classes, exit_code_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_exit_code_table_is_the_one_in_core():
    text = README.read_text()
    assert exit_code_table() in text, "README's exit-code table differs from core/errors.py: regenerate it with " \
                                      "python -c 'from edgerun.core.errors import exit_code_table; print(exit_code_table())'"
    start = text.index("| exit | meaning |")
    table = text[start:text.index("\n\n", start)]
    assert table == exit_code_table()


def test_every_error_class_exits_with_a_documented_code():
    documented = {int(c) for codes, _ in EXIT_MEANINGS for c in codes}
    classes = all_error_classes()
    assert len(classes) > 15  # the rooms' subclasses are in the tree too
    for cls in classes:
        if cls is EdgerunError:
            continue
        assert isinstance(cls.exit_code, ExitCode), f"{cls.__module__}.{cls.__name__} invents exit code {cls.exit_code}"
        assert int(cls.exit_code) in documented, f"{cls.__name__}: exit {int(cls.exit_code)} is not in the README table"


def test_codes_are_distinct_per_family():
    codes = [int(c) for codes, _ in EXIT_MEANINGS for c in codes]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("code", list(ExitCode))
def test_error_json_carries_an_int_code(code):
    err = EdgerunError("x")
    err.exit_code = code
    assert type(err.to_json()["exit_code"]) is int
