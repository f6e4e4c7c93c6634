"""Benchmark harness: warm-up, interleaved repeats, percentiles, peak memory, JSON/Markdown/PNG.

Public API::

    from sparsify.bench import bench, BenchResult, register_backend
    result = bench(["dense.onnx", "sparse.onnx"], batches=(1, 8), threads=(1, 2))
    print(result.table()); result.to_json("bench.json")

The JSON schema is documented in :mod:`sparsify.bench.report` and ``SCHEMA.md``.
"""

from sparsify.bench.backends import (
    Backend,
    InputSpec,
    Runner,
    TorchBackend,
    available_backends,
    pick_backend,
    register_backend,
)
from sparsify.bench.harness import bench
from sparsify.bench.report import SCHEMA, BenchResult, Record
from sparsify.bench.timing import Stats, measure, measure_interleaved

__all__ = [
    "SCHEMA", "Backend", "BenchResult", "InputSpec", "Record", "Runner", "Stats", "TorchBackend",
    "available_backends", "bench", "measure", "measure_interleaved", "pick_backend", "register_backend",
]
