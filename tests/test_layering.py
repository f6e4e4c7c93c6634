"""The import layering of pyproject.toml's [tool.importlinter] contracts holds (kernels <- runtime <- export <- api <- cli)
and no package has an import cycle among its modules and subpackages."""

from __future__ import annotations

import os
from pathlib import Path

from importlinter import cli

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(os.fspath(REPO))  # the kernels folder is a root package of the graph
    code = cli.lint_imports(config_filename=os.fspath(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "BROKEN" not in out and out.count("KEPT") == 5, out
