"""Atomic file and directory writes: a destination is either the old good content or the new complete one.

Every temporary of one write lives in one private folder beside the destination, named
``.NAME.sparsify-tmp-<pid>-<start>-<host tag>-<random>`` and holding an ``owner.json`` (process
id and start time, host, destination name). The folder is removed when the write ends, however it ends:
an exception, Ctrl-C, or SIGTERM/SIGHUP (turned into a clean exit with status 128 + the
signal's number, see :class:`Terminated`). A process killed outright (SIGKILL, power loss)
cannot clean up; the next write to the same destination removes such leftovers when
``owner.json`` (or, killed before that was written, the folder's name) proves them ours and
their process gone. Output folders created for a write
that then fails are removed again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from sparsify.errors import SparsifyError

TMP_TAG = ".sparsify-tmp-"
OWNER = "owner.json"
# Signals a write cleans up after; SIGINT already arrives as KeyboardInterrupt.
CLEANUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM/SIGHUP during a write: unwinds (removing the
    write's temporaries) and exits with status 128 + the signal number, without a traceback."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- signals ----------------------------------------------------------------------------
_signal_depth = 0
_terminating = False


def _on_signal(signum: int, frame: Any) -> None:
    global _terminating
    if _terminating:  # a second signal while the first unwinds: let the cleanup finish
        return
    _terminating = True
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While active (main thread only), SIGTERM/SIGHUP raise :class:`Terminated` instead of
    killing the process, so ``finally`` blocks run; handlers someone else installed are kept."""
    global _signal_depth, _terminating
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = {}
    if _signal_depth == 0:
        for sig in CLEANUP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                installed[sig] = signal.signal(sig, _on_signal)
    _signal_depth += 1
    try:
        yield
    except Terminated as exc:
        if _signal_depth == 1:
            print(f"sparsify: stopped by {signal.Signals(exc.signum).name}; removing the unfinished output",
                  file=sys.stderr)
        raise
    finally:
        _signal_depth -= 1
        for sig, previous in installed.items():
            signal.signal(sig, previous)
        if _signal_depth == 0:
            _terminating = False


# -- ownership of temporary folders -------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _owner_record(dest: Path) -> dict[str, Any]:
    pid = os.getpid()
    return {"tool": "sparsify", "pid": pid, "start": _start_time(pid), "host": socket.gethostname(),
            "dest": dest.name}


def _host_tag() -> str:
    """A short digest of this host's name, for temporary folder names."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _folder_prefix(dest: Path) -> str:
    """The name of a write's private folder up to mkdtemp's random part: it carries the owner's
    process id, start time and host tag too, so that a write killed before its ``owner.json``
    was complete still leaves a folder the next write can prove stale."""
    pid = os.getpid()
    return f".{dest.name}{TMP_TAG}{pid}-{_start_time(pid) or 'x'}-{_host_tag()}-"


def _owner_from_name(name: str, dest_name: str) -> dict[str, Any] | None:
    """The owner a folder's name states (``_folder_prefix``), or None for any other name."""
    parts = name[len(f".{dest_name}{TMP_TAG}"):].split("-")
    if len(parts) < 4 or not parts[0].isdigit() or not parts[1].isdigit() or len(parts[2]) != 8:
        return None
    host = socket.gethostname() if parts[2] == _host_tag() else None
    return {"tool": "sparsify", "pid": int(parts[0]), "start": parts[1], "host": host, "dest": dest_name}


def _owner_gone(owner: dict[str, Any]) -> bool:
    """True only when the process that wrote ``owner`` provably no longer runs."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    start = _start_time(pid)
    return owner.get("start") is not None and start is not None and start != owner["start"]  # pid reused


def remove_stale(parent: Path, dest_name: str) -> list[Path]:
    """Remove the temporary folders of earlier writes to ``parent/dest_name`` whose process is
    gone (killed before it could clean up); returns what was removed."""
    removed = []
    prefix = f".{dest_name}{TMP_TAG}"
    try:
        entries = [e for e in parent.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue
        try:
            owner = json.loads((entry / OWNER).read_text())
        except (OSError, ValueError):  # killed before owner.json was complete: the name says
            owner = _owner_from_name(entry.name, dest_name)
        if (isinstance(owner, dict) and owner.get("tool") == "sparsify" and owner.get("dest") == dest_name
                and _owner_gone(owner)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


# -- the private folder of one write -------------------------------------------------------
def _create_parents(parent: Path, dest: Path, error: type[SparsifyError]) -> list[Path]:
    """Create ``parent`` and missing ancestors; returns the folders created (deepest last)."""
    missing = []
    p = parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(list(reversed(missing)))
        raise error(f"cannot create the output folder {parent} for {dest}: {exc.strerror or exc}") from exc
    return list(reversed(missing))


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def _within(path: str | None, folder: Path) -> bool:
    if not path:
        return False
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def workspace(dest: str | Path, error: type[SparsifyError]) -> Iterator[Path]:
    """A private folder beside ``dest`` for every temporary of one write (see the module docstring).

    Removed on exit however the block ends; folders created for ``dest`` are removed again
    when the block fails. An OSError about a file inside the folder becomes ``error``.
    """
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    # Signals unwind from before the first folder is made to after the last one is removed.
    with _signals_unwind():
        created = _create_parents(parent, dest, error)
        ok = False
        try:
            if not os.access(parent, os.W_OK):
                raise error(f"output path {dest} is not writable (no write permission on {parent})")
            remove_stale(parent, dest.name)
            try:
                work = Path(tempfile.mkdtemp(prefix=_folder_prefix(dest), dir=parent))
            except OSError as exc:
                raise error(f"output path {dest} cannot be written: creating a file in {parent} failed "
                            f"({exc.strerror or exc})") from None
            try:
                (work / OWNER).write_text(json.dumps(_owner_record(dest)))
                yield work
                ok = True
            except OSError as exc:
                if _within(getattr(exc, "filename", None), work) or _within(getattr(exc, "filename2", None), work):
                    raise error(f"cannot write {dest}: {exc.strerror or exc}") from None
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            if not ok:
                _remove_empty(created)


def _replace(src: Path, dest: Path, error: type[SparsifyError]) -> None:
    try:
        os.replace(src, dest)
    except OSError as exc:
        raise error(f"cannot write {dest}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_path(dest: str | Path, error: type[SparsifyError]) -> Iterator[Path]:
    """Yield a temporary file path (an empty file, named like ``dest``) in a private folder beside
    ``dest``; on success it replaces ``dest``, else it and every other temporary are removed."""
    dest = Path(dest)
    if dest.is_dir():
        raise error(f"output path {dest} is a directory; expected a file path")
    with workspace(dest, error) as work:
        # The name keeps the destination's extension (writers such as matplotlib infer the format).
        tmp = work / dest.name
        tmp.touch()
        yield tmp
        _replace(tmp, dest, error)


def write_json(dest: str | Path, obj: Any, error: type[SparsifyError]) -> None:
    """Write JSON atomically (indent 2, keys in insertion order)."""
    with atomic_path(dest, error) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(dest: str | Path, error: type[SparsifyError], marker: str) -> Iterator[Path]:
    """Yield a temporary directory in a private folder beside ``dest``; on success it replaces ``dest``.

    An existing ``dest`` is replaced only if it is empty or holds ``marker`` (i.e. it is one of
    our outputs); anything else is refused so that user files are never deleted.
    """
    dest = Path(dest)
    # One stat, then one listing: a concurrent write to the same destination may move it
    # away in between, which is no reason to refuse.
    try:
        is_dir = stat.S_ISDIR(os.stat(dest).st_mode)
        names = os.listdir(dest) if is_dir else []
    except (FileNotFoundError, NotADirectoryError):
        is_dir, names = None, []
    except OSError as exc:
        raise error(f"cannot read the output path {dest}: {exc.strerror or exc}") from None
    if is_dir is False:
        raise error(f"output path {dest} exists and is not a directory")
    if names and marker not in names:
        raise error(f"output directory {dest} exists, is not empty and holds no {marker}; refusing to replace it")
    with workspace(dest, error) as work:
        tmp = work / dest.name
        tmp.mkdir(mode=0o777)
        yield tmp
        # Another command may write the same destination at the same time: the last one wins.
        for attempt in range(3):
            if dest.exists():
                try:
                    os.replace(dest, work / f"old-{attempt}")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise error(f"cannot replace {dest}: {exc.strerror or exc}") from None
            try:
                os.replace(tmp, dest)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 2:
                    raise error(f"cannot write {dest}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def held_lock(path: str | Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the file at ``path`` (created, with its folder, when
    missing) until the block ends or the process does: processes that share a cache take
    turns. Yields False, holding nothing, where the file system refuses locks (some network
    file systems); OSError when the file cannot be created."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
