"""One way to open an ONNX Runtime CPU session, shared by verification, the runtime and bench."""

from __future__ import annotations

import os
from pathlib import Path

from sparsify.errors import ModelFileError


def ort_session(model: str | os.PathLike | bytes, threads: int = 1, *, spinning: bool = True, where: str | None = None,
                profile_prefix: str | None = None, prepack: bool = True):
    """An ``InferenceSession`` on the CPU with ``threads`` intra-op threads, sequential execution and
    all graph optimizations; ``spinning=False`` stops idle pool threads from busy-waiting (use it
    when other compute runs between calls); ``profile_prefix`` turns on ORT's per-node profiler
    (its JSON file starts with that path); ``prepack=False`` keeps ORT from adding a packed copy
    of every MatMul/Gemm weight (faster repeated calls, about twice the weights' memory). A
    model ORT cannot load is a ModelFileError naming it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Errors reach the caller as exceptions (wrapped with the model and node named); ORT's own
    # log lines on stderr would only repeat them around that one-paragraph message.
    opts.log_severity_level = 4
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else os.fspath(model)
    name = where or (str(Path(source)) if not isinstance(source, bytes) else "in-memory model")
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph / ... types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{name}: ONNX Runtime could not load the model: {first}") from exc
