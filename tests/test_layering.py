"""The import layering of pyproject.toml's [tool.importlinter] contracts holds (kernels <- runtime <- export <- api <- cli)
and no package has an import cycle among its modules and subpackages."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from importlinter import cli

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(os.fspath(REPO))  # the kernels folder is a root package of the graph
    # Another test may have imported Hugging Face's `kernels` distribution (installed beside us):
    # the graph's `kernels` must be this repository's folder, so forget that one for this test.
    for name in [m for m in sys.modules if m == "kernels" or m.startswith("kernels.")]:
        monkeypatch.delitem(sys.modules, name)
    assert Path(importlib.util.find_spec("kernels").origin).parent == REPO / "kernels"
    code = cli.lint_imports(config_filename=os.fspath(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "BROKEN" not in out and out.count("KEPT") == 5, out
