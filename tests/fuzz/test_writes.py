"""Family (e): interrupted and concurrent exports through the real CLI, in subprocesses.

SIGTERM in the middle of ``sparsify export --mode sparse`` exits 143 with one line on stderr
and leaves nothing: no temporary beside the destination, no folder it created, nothing in
$TMPDIR. After a SIGKILL (which nothing can catch), the next export to the same destination
removes the leftovers. Concurrent exports to one destination leave one complete, loadable
model. The mechanism itself is tested in ``tests/fileio/test_fileio.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsify.fileio import TMP_TAG
from tests.fuzz.oracle import check_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    from sparsify.cli import main

    run = tmp_path_factory.mktemp("writes") / "run"
    assert main(["prune", "digits-mlp", "--sparsity", "0.9", "-o", str(run)]) == 0
    return run


def _export(run: Path, dest: Path, tmpdir: Path, mode: str = "sparse") -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-m", "sparsify.cli", "export", str(run), "--mode", mode,
                             "-o", str(dest)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_workspace(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and any(TMP_TAG in p.name for p in folder.iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"export ended (exit {proc.returncode}) before it started writing: "
                                 f"{proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("export never started writing")


# Other libraries' persistent files in $TMPDIR: torch's compile cache, ONNX Runtime's session id.
FOREIGN = {"torchinductor_root", ".ses"}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in FOREIGN) if folder.exists() else []


@pytest.mark.seeds(1, 4)
def test_sigterm_during_a_sparse_export_exits_143_and_leaves_nothing(pruned_run, tmp_path, seed):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    dest = tmp_path / "new" / "model.onnx"
    proc = _export(pruned_run, dest, tmpdir)
    _wait_for_workspace(dest.parent, proc)
    time.sleep(np.random.default_rng(seed).uniform(0, 3) if seed else 0.0)  # --fuzz-long: later stops
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the export finished before the signal arrived
        assert onnx.load(str(dest)) is not None and _leftovers(dest.parent) == ["model.onnx"]
        return
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["sparsify: stopped by SIGTERM; removing the unfinished output"], err
    assert not dest.parent.exists(), _leftovers(dest.parent)
    assert _leftovers(tmpdir) == []


def test_after_a_sigkill_the_next_export_to_the_destination_removes_the_leftovers(pruned_run, tmp_path, capfd):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    dest = tmp_path / "model.onnx"
    proc = _export(pruned_run, dest, tmpdir)
    _wait_for_workspace(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert any(TMP_TAG in name for name in _leftovers(tmp_path))
    assert _leftovers(tmpdir) == []  # nothing of the export lives outside its private folder
    assert check_cli(["export", str(pruned_run), "--mode", "dense", "--no-verify", "-o", str(dest)], capfd) == 0
    assert _leftovers(tmp_path) == ["model.onnx", "tmpdir"]


def test_concurrent_exports_to_one_destination_leave_one_complete_model(pruned_run, tmp_path, fuzz_long):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    dest = tmp_path / "model.onnx"
    procs = [_export(pruned_run, dest, tmpdir, mode) for mode in ("sparse", "dense")]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    model = onnx.load(str(dest))
    onnx.checker.check_model(model)
    assert _leftovers(tmp_path) == ["model.onnx", "tmpdir"] and _leftovers(tmpdir) == []
