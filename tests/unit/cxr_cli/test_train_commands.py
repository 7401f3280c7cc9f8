"""`cxr compare` (cxr_cli.train_commands) runs the benchmarks of the checkout it was installed from;
installed from a wheel, which ships no benchmarks, it says so instead of failing on an import."""

import importlib

import pytest

from cxr.errors import CxrError

commands = importlib.import_module("cxr_cli.train_commands")


def test_the_checkout_benchmarks_are_found_beside_the_command():
    assert importlib.import_module("benchmarks.compare") is commands._checkout_benchmarks()


def test_without_a_checkout_the_command_says_where_to_run_it(tmp_path, monkeypatch):
    (tmp_path / "cxr_cli").mkdir()
    monkeypatch.setattr(commands, "__file__", str(tmp_path / "cxr_cli" / "main.py"))
    with pytest.raises(CxrError, match="source checkout"):
        commands._checkout_benchmarks()
