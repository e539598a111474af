"""Every docstring example in the package runs and shows what it prints (doctest), so the docs stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lightning_margin

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(lightning_margin.__path__, prefix="lightning_margin.")
    if not name.endswith("__main__")  # importing it would run the command line
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_print_what_they_show(name, capsys):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    report = capsys.readouterr().out  # doctest prints each failing example with what it got
    assert result.failed == 0, report
