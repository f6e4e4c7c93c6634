"""Peak memory of loading and running a model, measured in a fresh process.

What is measured: a new Python process imports the backend's libraries (numpy,
onnxruntime / torch / the sparse runtime), resets the kernel's peak-RSS mark to the current
RSS (writing ``5`` to ``/proc/self/clear_refs``) and reads the current RSS as the *baseline*,
then loads the model, builds feeds at the given batch, runs it ``runs`` times, and reads the
peak RSS (``VmHWM`` in ``/proc/self/status``). The reported number is ``peak - baseline``:
the extra resident memory the model needed at its worst moment —
weights (including any copy made while loading), the runtime's arenas and caches, thread
stacks touched, activations, feeds and outputs, and the runtime's one-time costs of a first
session (lazily touched code pages, arenas: about 16 MiB for ONNX Runtime even on a tiny
model). It excludes the interpreter and the imported library code. It is a high-water mark, not a steady state, and page-granular.

Where the peak mark cannot be reset (not Linux, or a kernel that refuses), the baseline is
``getrusage(RUSAGE_SELF).ru_maxrss`` after the imports; then memory freed after a transient
import-time peak is reused unseen and the number can be an underestimate (``method``
records which one was used).

The child is started with ``sys.executable -m sparsify.bench.memory '<json request>'`` and
prints one JSON line. The backend is re-created in the child from an importable factory
reference (see :func:`sparsify.bench.backends.factory_reference`).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsify.trust import CodeTrust

# Modules a backend imports before the baseline is taken, by backend class attribute.
PRELOAD_ATTR = "preload_modules"
DEFAULT_PRELOAD = {"ort": ("onnxruntime",), "sparsify": ("onnx", "sparsify.runtime"), "torch": ("torch",)}


@dataclass(frozen=True)
class MemoryResult:
    """Peak extra memory in MiB (None when not measured, with the reason in ``error``)."""

    peak_mib: float | None
    baseline_mib: float | None = None
    batch: int | None = None
    threads: int | None = None
    error: str | None = None
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "peak_mib": self.peak_mib,
            "baseline_mib": self.baseline_mib,
            "batch": self.batch,
            "threads": self.threads,
            "error": self.error,
            "method": self.method,
        }


def _maxrss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _proc_status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == key:
                    return int(value.split()[0]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False when unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_mib("VmHWM") is not None and _proc_status_mib("VmRSS") is not None


def _baseline() -> tuple[float, str]:
    if _reset_peak():
        return _proc_status_mib("VmRSS"), "VmHWM"  # type: ignore[return-value]
    return _maxrss_mib(), "ru_maxrss"


def _peak(method: str) -> float:
    peak = _proc_status_mib("VmHWM") if method == "VmHWM" else None
    return _maxrss_mib() if peak is None else peak


def measure_peak_memory(
    path: str | os.PathLike,
    backend: str,
    factory: str | None,
    *,
    threads: int,
    batch: int,
    seed: int = 0,
    runs: int = 3,
    timeout: float = 600.0,
    trust: CodeTrust | None = None,
    dims: dict[str, int] | None = None,
) -> MemoryResult:
    """Run the memory probe in a fresh process; failures come back as ``MemoryResult.error``.

    ``trust`` is handed to the factory (the default torch backend's) in the fresh process;
    ``dims`` size the inputs' dynamic dims (``sparsify.bench.inputs.make_feeds``).
    """
    if factory is None:
        return MemoryResult(None, batch=batch, threads=threads,
                            error=f"backend {backend!r} was registered with a factory a fresh process "
                                  "cannot import (a lambda or local function); register a module-level one")
    request = {"path": os.fspath(path), "backend": backend, "factory": factory,
               "threads": threads, "batch": batch, "seed": seed, "runs": runs, "dims": dict(dims or {})}
    if trust is not None:
        request["trust"] = {"everything": trust.everything, "refs": sorted(trust.refs)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sparsify.bench.memory", json.dumps(request)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return MemoryResult(None, batch=batch, threads=threads, error=f"memory probe timed out after {timeout:.0f} s")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return MemoryResult(None, batch=batch, threads=threads,
                            error=f"memory probe exited with {proc.returncode}: {tail}")
    out = json.loads(lines[-1])
    return MemoryResult(out["peak_mib"] - out["baseline_mib"], out["baseline_mib"], batch, threads,
                        method=out["method"])


def _child(request: dict[str, Any]) -> dict[str, float]:
    """In the fresh process: import, take the baseline, load, run, take the peak."""
    import numpy  # noqa: F401  (part of the baseline)

    from sparsify.bench.backends import resolve_factory
    from sparsify.bench.inputs import make_feeds, recorded_inputs

    factory = resolve_factory(request["factory"])
    trust = request.get("trust")
    backend = factory(CodeTrust(trust["everything"], frozenset(trust["refs"]))) if trust else factory()
    preload = getattr(backend, PRELOAD_ATTR, DEFAULT_PRELOAD.get(request["backend"], ()))
    for module in preload:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # the load below reports the missing dependency properly
    baseline, method = _baseline()
    runner = backend.load(Path(request["path"]), int(request["threads"]))
    feeds = make_feeds(runner.input_specs, int(request["batch"]), seed=int(request["seed"]), where=request["path"],
                       dims=request.get("dims"), recorded=recorded_inputs(request["path"]))
    for _ in range(int(request["runs"])):
        runner.run(feeds)
    return {"baseline_mib": baseline, "peak_mib": _peak(method), "method": method}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
