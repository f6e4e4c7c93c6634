"""Benchmark results and their renderings: terminal table, Markdown, JSON (the PNG chart is
``sparsify.bench.plot.plot_result``, which reads these results; this module does not import it).

JSON schema ``sparsify.bench/1`` (also in ``sparsify/bench/SCHEMA.md``)::

    {
      "schema": "sparsify.bench/1",
      "created": "2026-01-01T12:00:00Z",              # UTC, when the report was written
      "machine": {
        "cpu": str, "logical_cores": int, "usable_cores": int, "os": str, "python": str,
        "packages": {"numpy": str|null, "torch": ..., "onnxruntime": ..., "onnx": ..., "numba": ...}
      },
      "config": {
        "models": [str], "batches": [int], "threads": [int], "backend": str|null,
        "warmup": int, "repeat": int|null, "min_time": float, "memory": bool, "seed": int, "input_shapes": [str],
        "interleaved": true, "percentiles": "numpy linear interpolation",
        "inputs": str                                   # how feeds were generated
      },
      "models": [{                                      # one per model, in command-line order
        "model": str, "label": str, "backend": str, "kind": "onnx"|"run",
        "file_bytes": int, "file_mib": float,
        "input_specs": [{"name": str, "shape": [int|str|null], "dtype": str}],
        "memory": {"peak_mib": float|null, "baseline_mib": float|null,
                   "batch": int|null, "threads": int|null, "error": str|null} | null
      }],
      "results": [{                                     # one per (model, batch, threads)
        "model": str, "label": str, "backend": str, "batch": int, "threads": int,
        "n": int, "mean_ms", "stdev_ms", "min_ms", "max_ms",
        "p25_ms", "p50_ms", "p75_ms", "p90_ms", "p99_ms", "iqr_ms": float,
        "spread": float,                                # iqr_ms / p50_ms
        "throughput_per_s": float,                      # batch / p50
        "speedup": float,                               # p50 of reference / p50 of this row
        "reference": str,                               # label of the first model (same batch, threads)
        "peak_mib": float|null, "file_mib": float
      }]
    }

A reader must check ``schema``; fields may be added within version 1, never renamed or removed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify.bench.timing import Stats
from sparsify.errors import SparsifyError
from sparsify.fileio import atomic_path

SCHEMA = "sparsify.bench/1"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelInfo:
    """Per-model facts: what it is, its size on disk, its inputs, its peak memory."""

    model: str
    label: str
    backend: str
    kind: str
    file_bytes: int
    input_specs: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] | None = None
    conversion: dict[str, Any] | None = None  # a sparse export's record of where its layers were decided

    @property
    def peak_mib(self) -> float | None:
        """Peak extra MiB while loading and running, if measured."""
        return None if self.memory is None else self.memory.get("peak_mib")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "model": self.model, "label": self.label, "backend": self.backend, "kind": self.kind,
            "file_bytes": self.file_bytes, "file_mib": self.file_bytes / MIB,
            "input_specs": self.input_specs, "memory": self.memory, "conversion": self.conversion,
        }


@dataclass(frozen=True)
class Record:
    """One (model, batch, threads) measurement."""

    model: str
    label: str
    backend: str
    batch: int
    threads: int
    stats: Stats
    throughput_per_s: float
    speedup: float
    reference: str
    peak_mib: float | None
    file_mib: float

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly form (stats fields inlined)."""
        return {
            "model": self.model, "label": self.label, "backend": self.backend,
            "batch": self.batch, "threads": self.threads, **self.stats.to_dict(),
            "throughput_per_s": self.throughput_per_s, "speedup": self.speedup,
            "reference": self.reference, "peak_mib": self.peak_mib, "file_mib": self.file_mib,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_dict`."""
        stats = Stats(**{k: d[k] for k in Stats.__dataclass_fields__})
        return cls(d["model"], d["label"], d["backend"], d["batch"], d["threads"], stats,
                   d["throughput_per_s"], d["speedup"], d["reference"], d["peak_mib"], d["file_mib"])


def _fmt_ms(v: float) -> str:
    return f"{v:.1f}" if v >= 100 else f"{v:.3f}" if v >= 1 else f"{v:.4f}"


def _fmt_opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


HEADERS = ("model", "backend", "batch", "threads", "p50 ms", "p90 ms", "p99 ms",
           "spread", "throughput/s", "speedup", "peak MiB", "file MiB")
# Columns aligned left (text); the others are right-aligned numbers.
_LEFT = {0, 1}


def _row(r: Record) -> list[str]:
    s = r.stats
    return [
        r.label, r.backend, str(r.batch), str(r.threads),
        _fmt_ms(s.p50_ms), _fmt_ms(s.p90_ms), _fmt_ms(s.p99_ms),
        f"±{100 * s.spread / 2:.1f}%", f"{r.throughput_per_s:.1f}", f"{r.speedup:.2f}x",
        _fmt_opt(r.peak_mib, ".1f"), f"{r.file_mib:.2f}",
    ]


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The destination is never left half-written: on any error the temporary file is removed
    and an existing file at ``path`` is untouched. Parent directories are created.
    """
    with atomic_path(path, SparsifyError) as tmp:
        write(tmp)
    return Path(path)


@dataclass
class BenchResult:
    """Everything one ``bench()`` call measured, with its configuration and machine."""

    machine: dict[str, Any]
    config: dict[str, Any]
    models: list[ModelInfo]
    records: list[Record]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema ``sparsify.bench/1``, see the module docstring)."""
        return {
            "schema": SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": self.machine,
            "config": self.config,
            "models": [m.to_dict() for m in self.models],
            "results": [r.to_dict() for r in self.records],
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the JSON document atomically; returns the path."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BenchResult:
        """Read back a document written by :meth:`to_dict`; checks the schema tag."""
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"benchmark document has schema {doc.get('schema')!r}; expected {SCHEMA!r}")
        models = [
            ModelInfo(m["model"], m["label"], m["backend"], m["kind"], m["file_bytes"],
                      m.get("input_specs", []), m.get("memory"), m.get("conversion"))
            for m in doc["models"]
        ]
        return cls(doc["machine"], doc["config"], models, [Record.from_dict(r) for r in doc["results"]])

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BenchResult:
        """Read a JSON file written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def rows(self) -> list[list[str]]:
        """The table cells, one list of strings per record (columns as in ``HEADERS``)."""
        return [_row(r) for r in self.records]

    def table(self) -> str:
        """A plain-text table with aligned columns, for the terminal."""
        cells = [list(HEADERS), *self.rows()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]

        def line(row: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i in _LEFT else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip()

        sep = "  ".join("-" * w for w in widths)
        return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table, with a line naming the machine."""
        head = "| " + " | ".join(HEADERS) + " |"
        align = "| " + " | ".join(":---" if i in _LEFT else "---:" for i in range(len(HEADERS))) + " |"
        body = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows()]
        cores = self.machine.get("logical_cores")
        variant = (self.machine.get("isa") or {}).get("kernel_variant")
        kernels = f", sparsify's {variant} kernels" if variant else ""
        caption = (f"Measured on {self.machine.get('cpu', 'unknown CPU')} ({cores} logical cores{kernels}); "
                   "latency percentiles over interleaved runs, spread = ±IQR/2 relative to p50, "
                   "speedup vs the first model at the same batch and threads, peak MiB = extra "
                   "resident memory of loading and running the model in a fresh process.")
        return "\n".join([head, align, *body, "", caption]) + "\n"

    def write_markdown(self, path: str | os.PathLike) -> Path:
        """Write :meth:`markdown` atomically; returns the path."""
        text = self.markdown()
        return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
