"""Atomic file and directory writes: a destination is either the old good content or the new complete one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sparsify.errors import SparsifyError


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


def _parent_for(dest: Path, error: type[SparsifyError]) -> Path:
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create the output folder {parent} for {dest}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK):
        raise error(f"output path {dest} is not writable (no write permission on {parent})")
    return parent


@contextlib.contextmanager
def atomic_path(dest: str | Path, error: type[SparsifyError]) -> Iterator[Path]:
    """Yield a temporary file path beside ``dest``; on success it replaces ``dest``, else it is removed."""
    dest = Path(dest)
    if dest.is_dir():
        raise error(f"output path {dest} is a directory; expected a file path")
    parent = _parent_for(dest, error)
    # The suffix keeps the destination's extension (writers such as matplotlib infer the format).
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(dest: str | Path, obj: Any, error: type[SparsifyError]) -> None:
    """Write JSON atomically (indent 2, keys in insertion order)."""
    with atomic_path(dest, error) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(dest: str | Path, error: type[SparsifyError], marker: str) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest``; on success it replaces ``dest``.

    An existing ``dest`` is replaced only if it is empty or holds ``marker`` (i.e. it is one of
    our outputs); anything else is refused so that user files are never deleted.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise error(f"output path {dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / marker).exists():
        raise error(f"output directory {dest} exists, is not empty and holds no {marker}; refusing to replace it")
    parent = _parent_for(dest, error)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=parent))
            old.rmdir()
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
