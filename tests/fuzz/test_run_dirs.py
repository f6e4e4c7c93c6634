"""Family (b): run directories (manifest fields, safetensors headers, masks) -- where the cases
of the manifest-schema work join the suite.

A case is ``(name, make)``: ``make(folder)`` writes a run directory (start from ``base_run``, a
pruned digits-mlp run, and break one thing); every command that reads runs must then exit 0,
2 or 3 with one line on stderr (``oracle.check_cli``). Add cases to RUN_DIR_CASES.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from tests.fuzz.oracle import check_cli


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    from sparsify.cli import main

    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["prune", "digits-mlp", "--sparsity", "0.5", "-o", str(run)]) == 0
    return run


def _copy(base: Path, folder: Path) -> Path:
    run = folder / "run"
    shutil.copytree(base, run)
    return run


def manifest_not_json(base: Path, folder: Path) -> Path:
    run = _copy(base, folder)
    (run / "manifest.json").write_text("{ not json")
    return run


def manifest_a_list(base: Path, folder: Path) -> Path:
    run = _copy(base, folder)
    (run / "manifest.json").write_text(json.dumps([1, 2, 3]))
    return run


def weights_truncated(base: Path, folder: Path) -> Path:
    run = _copy(base, folder)
    data = (run / "weights.safetensors").read_bytes()
    (run / "weights.safetensors").write_bytes(data[: len(data) // 2])
    return run


RUN_DIR_CASES: dict[str, Callable[[Path, Path], Path]] = {
    "manifest not JSON": manifest_not_json,
    "manifest a list": manifest_a_list,
    "weights truncated": weights_truncated,
}


@pytest.mark.parametrize("name", sorted(RUN_DIR_CASES))
def test_run_directory_through_inspect_and_export_exits_cleanly(base_run, tmp_path, capfd, name):
    run = RUN_DIR_CASES[name](base_run, tmp_path)
    check_cli(["inspect", str(run)], capfd)
    check_cli(["export", str(run), "--no-verify", "-o", str(tmp_path / "m.onnx")], capfd)
