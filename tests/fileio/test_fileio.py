"""Atomic writes: one private temporary folder per write, removed on failure and on SIGTERM;
leftovers of a killed write removed by the next write to the same destination; folders
created for a failed write removed; unwritable destinations are clean errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sparsify.errors import ExportError, SparsifyError
from sparsify.fileio import OWNER, TMP_TAG, atomic_dir, atomic_path, remove_stale

REPO = Path(__file__).resolve().parents[2]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_TAG in p.name or p.name.startswith("."))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_leftover(parent: Path, dest_name: str, owner: dict | None) -> Path:
    d = parent / f".{dest_name}{TMP_TAG}{owner['pid'] if owner else 0}-abc"
    d.mkdir()
    (d / dest_name).write_bytes(b"half")
    if owner is not None:
        (d / OWNER).write_text(json.dumps(owner))
    return d


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    dest = tmp_path / "out.onnx"
    dest.write_bytes(b"good")
    with pytest.raises(ExportError, match="boom"):
        with atomic_path(dest, ExportError) as tmp:
            assert tmp.parent.name.startswith(f".out.onnx{TMP_TAG}") and tmp.name == "out.onnx"
            (tmp.parent / "dense.onnx").write_bytes(b"scratch")  # another temporary of the same write
            tmp.write_bytes(b"half")
            raise ExportError("boom")
    assert dest.read_bytes() == b"good" and _leftovers(tmp_path) == []


def test_folders_created_for_a_failed_write_are_removed(tmp_path):
    with pytest.raises(ExportError):
        with atomic_path(tmp_path / "a" / "b" / "out.onnx", ExportError):
            raise ExportError("verification failed (simulated)")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "a" / "b" / "out.onnx", ExportError) as tmp:
        tmp.write_bytes(b"ok")
    assert (tmp_path / "a" / "b" / "out.onnx").read_bytes() == b"ok"


@pytest.mark.parametrize("dest", ["/proc/x.onnx", "/proc/self/x.onnx", "/sys/kernel/x.onnx"])
def test_destinations_that_cannot_be_written_are_clean_errors(dest):
    with pytest.raises(ExportError, match=rf"{dest}") as info:
        with atomic_path(dest, ExportError):
            raise AssertionError("the body must not run")
    assert "\n" not in str(info.value)


def test_the_next_write_removes_leftovers_of_a_killed_one_it_can_prove_are_ours(tmp_path):
    from sparsify.fileio import _owner_record

    mine = _owner_record(tmp_path / "out.onnx")
    dead = _fake_leftover(tmp_path, "out.onnx", {**mine, "pid": _dead_pid()})
    alive = _fake_leftover(tmp_path, "out.onnx", mine)  # this process: still running
    other_host = _fake_leftover(tmp_path, "out.onnx", {**mine, "pid": _dead_pid() + 1, "host": "elsewhere"})
    no_owner = _fake_leftover(tmp_path, "out.onnx", None)
    other_dest = _fake_leftover(tmp_path, "other.onnx", {**mine, "pid": _dead_pid(), "dest": "other.onnx"})
    with atomic_path(tmp_path / "out.onnx", ExportError) as tmp:
        tmp.write_bytes(b"new")
    assert not dead.exists()
    assert alive.exists() and other_host.exists() and no_owner.exists() and other_dest.exists()
    assert remove_stale(tmp_path, "other.onnx") == [other_dest]


def test_a_write_killed_before_its_owner_file_was_complete_is_stale_by_its_name(tmp_path):
    from sparsify.fileio import _folder_prefix, _start_time

    dest = tmp_path / "out.onnx"
    prefix = _folder_prefix(dest)
    assert prefix.startswith(f".out.onnx{TMP_TAG}{os.getpid()}-")
    pid = _dead_pid()
    dead = tmp_path / prefix.replace(f"{TMP_TAG}{os.getpid()}-", f"{TMP_TAG}{pid}-", 1)
    dead = dead.with_name(dead.name + "abc")
    dead.mkdir()
    (dead / OWNER).write_text('{"tool": "spars')  # cut short by the kill
    empty = dead.with_name(dead.name[:-3] + "xyz")
    empty.mkdir()  # killed between the folder and its owner file
    alive = tmp_path / (prefix + "def")  # this process, still running
    alive.mkdir()
    elsewhere = tmp_path / prefix.replace(f"{TMP_TAG}{os.getpid()}-", f"{TMP_TAG}{pid}-", 1)
    elsewhere = elsewhere.with_name(elsewhere.name[:-9] + "0badc0de-ghi")  # another host's tag
    elsewhere.mkdir()
    assert _start_time(os.getpid()) is not None
    assert sorted(remove_stale(tmp_path, "out.onnx")) == sorted([dead, empty])
    assert alive.exists() and elsewhere.exists()


def test_a_leftover_whose_pid_was_reused_is_stale(tmp_path):
    from sparsify.fileio import _owner_record

    reused = _fake_leftover(tmp_path, "out.onnx", {**_owner_record(tmp_path / "out.onnx"), "start": "1"})
    assert remove_stale(tmp_path, "out.onnx") == [reused]


# How long a signalled writer may take to clean up and exit: generous, since a loaded shared
# machine can be slow to; a writer that missed the signal sleeps its 60 s out and exits 0,
# which the exit-code check still catches.
COMMUNICATE_S = 120

WRITER = textwrap.dedent("""
    import sys, time
    from sparsify.errors import ExportError
    from sparsify.fileio import {func}
    with {func}(sys.argv[1], ExportError{extra}) as tmp:
        {write}
        print("ready", flush=True)
        time.sleep(60)
""")


def _signals(disposition) -> None:
    """In the child before exec: SIGTERM and SIGHUP as given (a runner started under nohup
    passes SIGHUP ignored to every child, and the writers keep an ignored signal ignored)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, disposition.get(sig, signal.SIG_DFL))


def _writer(dest: Path, kind: str, disposition: dict | None = None) -> subprocess.Popen:
    if kind == "file":
        code = WRITER.format(func="atomic_path", extra="", write="tmp.write_bytes(b'half')")
    else:
        code = WRITER.format(func="atomic_dir", extra=", 'manifest.json'",
                             write="(tmp / 'weights.safetensors').write_bytes(b'half')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, text=True, preexec_fn=functools.partial(_signals, disposition or {}))
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_write_cleans_up_and_exits_128_plus_the_signal(tmp_path, kind, sig):
    dest = tmp_path / "new" / ("out.onnx" if kind == "file" else "run")
    proc = _writer(dest, kind)
    assert _leftovers(dest.parent)  # the private folder exists while writing
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=COMMUNICATE_S)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"stopped by {signal.Signals(sig).name}" in err, err
    assert not (tmp_path / "new").exists()  # the folder created for the write went too


def test_an_ignored_hangup_stays_ignored_and_a_later_terminate_still_cleans_up(tmp_path):
    dest = tmp_path / "new" / "out.onnx"
    proc = _writer(dest, "file", {signal.SIGHUP: signal.SIG_IGN})  # as under nohup
    proc.send_signal(signal.SIGHUP)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1)
    assert _leftovers(dest.parent)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=COMMUNICATE_S)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    assert not (tmp_path / "new").exists()


def test_a_killed_write_is_cleaned_by_the_next_write_to_the_same_destination(tmp_path):
    dest = tmp_path / "out.onnx"
    proc = _writer(dest, "file")
    proc.kill()
    proc.wait()
    assert len(_leftovers(tmp_path)) == 1
    with atomic_path(dest, ExportError) as tmp:
        tmp.write_bytes(b"complete")
    assert _leftovers(tmp_path) == [] and dest.read_bytes() == b"complete"


CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sparsify.errors import RunError
    from sparsify.fileio import atomic_dir, atomic_path
    dest, me, kind = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    start = float(sys.argv[4])
    while time.time() < start:
        time.sleep(0.001)
    for i in range(25):
        if kind == "file":
            with atomic_path(dest, RunError) as tmp:
                tmp.write_bytes(me.encode() * 100_000)
        else:
            with atomic_dir(dest, RunError, "manifest.json") as tmp:
                (tmp / "weights.bin").write_bytes(me.encode() * 100_000)
                (tmp / "manifest.json").write_text(me)
""")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_concurrent_writes_to_one_destination_leave_one_complete_result(tmp_path, kind):
    dest = tmp_path / ("out.bin" if kind == "file" else "run")
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(dest), w, kind, start], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for w in "abc"]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0 or ("RunError" in err and "cannot" in err), err
    if kind == "file":
        data = dest.read_bytes()
        assert len(data) == 100_000 and len(set(data)) == 1
    else:
        writer = (dest / "manifest.json").read_text()
        assert (dest / "weights.bin").read_bytes() == writer.encode() * 100_000
    assert _leftovers(tmp_path) == []


def test_outputs_keep_the_usual_permissions_and_suffix(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "plot.png", SparsifyError) as tmp:
            assert tmp.suffix == ".png" and tmp.exists()
        with atomic_dir(tmp_path / "r", SparsifyError, "manifest.json") as tmp:
            (tmp / "manifest.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "plot.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o755


def test_held_lock_makes_processes_take_turns_and_survives_a_refused_lock(tmp_path, monkeypatch):
    import fcntl
    import subprocess
    import sys

    from sparsify.fileio import held_lock

    lock = tmp_path / "cache" / ".lock"
    with held_lock(lock) as held:
        assert held and lock.is_file()
        code = ("import sys, fcntl; f = open(sys.argv[1], 'a+b')\n"
                "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
                "except BlockingIOError:\n    print('held')")
        assert subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True).stdout == "held\n"
    assert subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True).stdout == "free\n"

    def refuse(*_args):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with held_lock(lock) as held:
        assert held is False
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        with held_lock(blocker / ".lock"):
            pass
