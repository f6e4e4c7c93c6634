"""A sparse file's conversions decided on the host that runs it, at load, cached per host and file.

A sparse export converts the layers that won in timings on the exporting host; on another
CPU or thread count other layers may win (benchmarks/README.md, "A file decided on another
host").
``sparsify run --decide-here`` and ``sparsify bench --decide-here`` (and
:func:`decided_here`) therefore export such a file again from itself on the running host
(``sparsify.export.from_file``, verified against the file) before running it, and keep
the result in the calibration cache (``sparsify.runtime.calibrate.cache_dir``): one entry
per source file, host and thread count, replaced when the source file changes. One process
decides at a time on a host; others wait for it (workers started together). A file whose
conversions were timed on this host at this thread count runs as it is, and so does every
file while layer timing is off (``$SPARSIFY_CALIBRATION``): the fixed rules know no better.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from sparsify.errors import ExportError
from sparsify.fileio import atomic_path

#: Cache subfolder of the re-decided files.
CACHE_FOLDER = "decided"
_KEY_FILE = "key.json"
_LOCK_FILE = ".lock"


@dataclasses.dataclass(frozen=True)
class Decided:
    """The file to run for ``source`` on this host, and how it was found.

    ``how`` is ``"as recorded"`` (timed here already, or nothing to decide), ``"cached"``
    (decided here by an earlier call) or ``"decided"`` (exported again by this call)."""

    source: Path
    path: Path
    how: str
    reason: str
    seconds: float = 0.0
    #: Seconds spent waiting for another process's decision (:func:`_decision_lock`).
    waited: float = 0.0
    #: (layers converted, layers decided) in ``path`` when decided here.
    converted: tuple[int, int] | None = None

    def describe(self) -> str:
        """One line for people."""
        if self.how == "as recorded":
            return f"{self.source.name}: runs as exported ({self.reason})"
        wait = f" (after waiting {self.waited:.1f} s for another process deciding)" if self.waited >= 0.1 else ""
        counts = f"{self.converted[0]} of {self.converted[1]} layers converted, " if self.converted else ""
        if self.how == "cached":
            return (f"{self.source.name}: conversions decided on this host earlier ({self.reason}): {counts}"
                    f"from {self.path}{wait}")
        return (f"{self.source.name}: conversions decided again on this host in {self.seconds:.2f} s "
                f"({self.reason}): {counts}cached at {self.path}{wait}")


def decided_here(source: str | os.PathLike, *, threads: int, input_shapes: Sequence[str] = (),
                 feed_shapes: Sequence[Sequence[int]] = ()) -> Decided:
    """The file to run for the ONNX file ``source`` with ``threads`` kernel threads here:
    ``source`` itself when its conversions were timed on this host at this thread count (or it
    has none to decide), else its re-export decided on this host (cached; see the module).
    ``input_shapes`` size dynamic dims the file records no size for (as ``--input-shape``);
    ``feed_shapes``, the shapes of the arrays the caller will feed, do so where they fit the
    file's inputs (the caller's own check reports those that do not)."""
    from sparsify.onnxfile import load_onnx
    from sparsify.runtime import calibrate
    from sparsify.runtime.conversion_record import read_record, same_host
    from sparsify.runtime.session import checked_threads
    from sparsify.sparse_ops import DOMAIN

    threads = checked_threads(threads)
    source = Path(source)
    if source.suffix != ".onnx" or not source.is_file():
        raise ExportError(f"--decide-here applies to ONNX files sparsify exported; {source} is not one")
    model = load_onnx(source)
    record = read_record(model)
    if record is None and not any(n.domain == DOMAIN for n in model.graph.node):
        return Decided(source, source, "as recorded", "a dense file: no sparse conversions to decide")
    timed = calibrate.enabled()
    if record is not None and record.get("decided_by") == "timed" and same_host(record, threads):
        return Decided(source, source, "as recorded", f"timed on this host at {threads} thread(s)")
    if record is not None and not timed:  # the fixed rules here would not know better than the file
        return Decided(source, source, "as recorded", f"timing is off here (${calibrate.ENV}), so the file's "
                       f"decisions ({record.get('decided_by')}) stand")
    if not input_shapes and _fits(model, feed_shapes):
        input_shapes = [",".join(str(d) for d in shape) for shape in feed_shapes]
    entry = calibrate.cache_dir() / CACHE_FOLDER / _entry_name(source, threads)
    key = _source_key(model, source, threads, timed)
    out = entry / source.name
    reason = _why(record, threads)
    cached = _cached(entry, key, out)
    if cached:
        return Decided(source, out, "cached", reason, converted=cached)
    start = time.perf_counter()
    with _decision_lock(entry):
        waited = time.perf_counter() - start
        cached = _cached(entry, key, out)
        if cached:  # decided by the process we waited for
            return Decided(source, out, "cached", reason, waited=waited, converted=cached)
        return _decide(source, entry, out, key, reason, threads, input_shapes, waited)


@contextlib.contextmanager
def _decision_lock(entry: Path) -> Iterator[None]:
    """Hold the host's decision lock (``decided/.lock``; released when the process ends): one
    process decides at a time, so that workers started together neither time their layers
    against each other's timings nor export the same file twice."""
    from sparsify.fileio import held_lock

    with contextlib.ExitStack() as stack:
        try:
            entry.mkdir(parents=True, exist_ok=True)
            stack.enter_context(held_lock(entry.parent / _LOCK_FILE))
        except OSError as exc:
            raise ExportError(f"cannot write the cache folder {entry}: {exc.strerror or exc} (set "
                              "$SPARSIFY_CACHE_DIR to a writable folder)") from None
        yield


def _decide(source: Path, entry: Path, out: Path, key: dict[str, Any], reason: str, threads: int,
            input_shapes: Sequence[str], waited: float) -> Decided:
    """Export ``source`` again on this host into the cache entry, then record its key."""
    from sparsify.export.from_file import export_file
    from sparsify.export.options import DEFAULT_ATOL, DEFAULT_RTOL

    (entry / _KEY_FILE).unlink(missing_ok=True)  # no key while the entry's model is replaced
    start = time.perf_counter()
    _, _, summary = export_file(source, out, mode="sparse", atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL,
                                input_shapes=input_shapes, target_threads=threads)
    seconds = time.perf_counter() - start
    converted = len(summary.get("converted", []))
    counts = (converted, converted + len(summary.get("skipped", [])))
    with atomic_path(entry / _KEY_FILE, ExportError) as tmp:
        tmp.write_text(json.dumps({"key": key, "converted": counts[0], "layers": counts[1]}, indent=1,
                                  sort_keys=True))
    return Decided(source, out, "decided", reason, seconds, waited, counts)


def _fits(model: Any, shapes: Sequence[Sequence[int]]) -> bool:
    """Whether ``shapes`` give one shape of the right rank per graph input of ``model``."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    return bool(shapes) and len(shapes) == len(inputs) and all(
        len(shape) == len(i.type.tensor_type.shape.dim) for shape, i in zip(shapes, inputs))


def _why(record: dict[str, Any] | None, threads: int) -> str:
    """Why ``record``'s decisions are taken again here, for people."""
    from sparsify.runtime.conversion_record import differences

    if record is None:
        return "the file records no conversion host"
    if record.get("decided_by") != "timed":
        return f"the file's were decided by {record.get('decided_by')}"
    core = f" ({record['host_cpu']})" if "host_cpu" in record else ""
    return f"the file's were timed on {record.get('cpu')}{core}; here: {', '.join(differences(record, threads).values())}"


def _entry_name(source: Path, threads: int) -> str:
    """The cache entry of ``source`` (by its absolute path) on this host at ``threads``."""
    from sparsify.runtime.calibrate import host_identity

    ident = json.dumps({"source": str(source.resolve()), "host": host_identity(threads)}, sort_keys=True)
    return f"{source.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _source_key(model: Any, source: Path, threads: int, timed: bool) -> dict[str, Any]:
    """What the cached decisions depend on besides the host: the source file and the external
    data files it reads (path, size, modification time), the thread count and whether the
    layers were timed."""
    from sparsify.onnxfile import external_entry, external_tensors

    files = {source.resolve()}
    files.update(external_entry(t, source.parent, str(source))[0].resolve() for t in external_tensors(model))
    stats = {}
    for path in sorted(files):
        stat = path.stat()
        stats[str(path)] = [stat.st_size, stat.st_mtime_ns]
    return {"files": stats, "threads": int(threads), "timed": bool(timed)}


def _cached(entry: Path, key: dict[str, Any], out: Path) -> tuple[int, int] | None:
    """(layers converted, layers decided) of the entry's file when it was decided from the
    source ``key`` describes and is still there; else None."""
    try:
        doc = json.loads((entry / _KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key or not out.is_file():
        return None
    return int(doc.get("converted", 0)), int(doc.get("layers", 0))


__all__: Sequence[str] = ["Decided", "decided_here", "CACHE_FOLDER"]
