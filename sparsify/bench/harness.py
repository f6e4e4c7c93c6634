"""The benchmark driver: check the models, then for every (threads, batch) point measure all
models interleaved, optionally probe peak memory per model, and collect a BenchResult.

Order of work: every model path is checked before anything is timed (a typo fails fast).
For each thread count every model is loaded once; for each batch, feeds are generated
(seeded, identical for models with identical inputs), every model runs once untimed as a
check (a failure there names the model, backend, batch and feed shapes), then the warm-up
and timed rounds run interleaved. Peak memory is probed afterwards, one fresh process per
model, at the largest batch and thread count.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sparsify.bench.backends import factory_reference, get_backend, pick_backend, takes_trust
from sparsify.bench.inputs import dims_from_shapes, make_feeds, recorded_inputs
from sparsify.machine import machine_info
from sparsify.bench.memory import measure_peak_memory
from sparsify.bench.modelfile import ModelFile, check_model_path, size_on_disk
from sparsify.bench.report import MIB, BenchResult, ModelInfo, Record
from sparsify.bench.timing import Stats, measure_interleaved, throughput
from sparsify.errors import ModelError, SparsifyError, in_step
from sparsify.trust import CodeTrust

INPUTS_DOC = ("seeded numpy default_rng; float inputs standard normal, integer inputs uniform in [0, 10) "
              "unless the file records their valid values (token ids, 0/1 padding masks), "
              "bool inputs fair coin flips; first dim set to the batch size")


def model_labels(models: Sequence[str | os.PathLike]) -> list[str]:
    """Short names for the table: the file or directory name, or the full path where names collide."""
    names = [Path(m).name or os.fspath(m) for m in models]
    return [n if names.count(n) == 1 else os.fspath(m) for n, m in zip(names, models)]


def _check_positive(name: str, values: Sequence[int]) -> list[int]:
    vals = list(values)
    if not vals or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in vals):
        raise ValueError(f"{name}={values!r} should be a non-empty sequence of positive integers")
    return vals


def _first_run(runner, feeds, mf: ModelFile, backend: str, batch: int) -> None:
    try:
        runner.run(feeds)
    except SparsifyError:
        raise
    except Exception as exc:  # a backend's own error type: name the model and the point
        shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in feeds.items()}
        raise ModelError(
            f"{mf.path}: backend {backend!r} failed to run at batch {batch} with inputs {shapes}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def bench(
    models: Sequence[str | os.PathLike],
    *,
    batches: Sequence[int] = (1,),
    threads: Sequence[int] = (1,),
    backend: str | None = None,
    warmup: int = 10,
    repeat: int | None = None,
    min_time: float = 1.0,
    memory: bool = True,
    seed: int = 0,
    progress: bool = True,
    trust: CodeTrust | None = None,
    input_shapes: Sequence[str] = (),
) -> BenchResult:
    """Benchmark ``models`` at every (batch, threads) point; the first model is the speedup reference.

    ``backend`` forces one backend for all models; ``None`` picks per model (``sparsify`` for
    ONNX graphs with ``ai.sparsify`` ops, ``ort`` for other ONNX files, ``torch`` for run
    directories). ``repeat`` fixes the number of timed runs; ``None`` runs for about
    ``min_time`` seconds per model and point. ``memory`` probes peak memory in a fresh
    process per model. ``trust`` allows the code references run directories name (their
    model), as ``--trust-code`` does. ``input_shapes`` (``--input-shape``, one per input, in
    order; every model's inputs) size the dynamic dims other than the batch, over the sizes a
    file records. Raises ModelFileError for a path that is not a model.
    """
    if isinstance(models, (str, os.PathLike)) or len(models) == 0:
        raise ValueError(f"models={models!r} should be a non-empty sequence of paths")
    batches = _check_positive("batches", batches)
    threads = _check_positive("threads", threads)
    if warmup < 0 or (repeat is not None and repeat < 1) or (repeat is None and not min_time > 0):
        raise ValueError(f"warmup={warmup}, repeat={repeat}, min_time={min_time}: expected warmup >= 0 "
                         "and either repeat >= 1 or min_time > 0")

    files = [check_model_path(m) for m in models]
    recorded = {mf.path: recorded_inputs(mf.path) for mf in files}  # valid token ids, masks, sequence
    chosen = [pick_backend(mf, backend) for mf in files]
    labels = model_labels(models)
    instances = {name: get_backend(name, trust) for name in dict.fromkeys(chosen)}
    sizes = [size_on_disk(mf) for mf in files]
    specs: list[list] = [[] for _ in files]
    dims: list[dict[str, int]] = [{} for _ in files]

    from tqdm import tqdm

    bar = tqdm(total=len(threads) * len(batches) + (len(files) if memory else 0),
               desc="bench", unit="step", file=sys.stderr, disable=not progress, leave=False)
    stats_at: dict[tuple[int, int, int], Stats] = {}
    try:
        for t in threads:
            runners = [instances[name].load(mf.path, t) for name, mf in zip(chosen, files)]
            for i, r in enumerate(runners):
                specs[i] = [s.to_dict() for s in r.input_specs]
                dims[i] = dims_from_shapes(r.input_specs, input_shapes, str(files[i].path))
            for b in batches:
                bar.set_postfix_str(f"batch={b} threads={t}")
                fns = []
                for i, (mf, name, runner) in enumerate(zip(files, chosen, runners)):
                    feeds = make_feeds(runner.input_specs, b, seed=seed, where=str(mf.path), dims=dims[i],
                                       recorded=recorded[mf.path])
                    _first_run(runner, feeds, mf, name, b)
                    fns.append(functools.partial(runner.run, feeds))
                with in_step("benchmarking", f"{', '.join(labels)} at batch {b}, {t} threads",
                             "each model ran once before timing; re-run with 'sparsify --debug' for the traceback"):
                    samples = measure_interleaved(fns, warmup=warmup, repeat=repeat, min_time=min_time)
                for i, s in enumerate(samples):
                    stats_at[(i, b, t)] = Stats.from_ns(s)
                bar.update(1)
            del runners, fns

        mem: list[dict | None] = [None] * len(files)
        if memory:
            for i, (mf, name) in enumerate(zip(files, chosen)):
                bar.set_postfix_str(f"memory {labels[i]}")
                mem[i] = measure_peak_memory(mf.path, name, factory_reference(name),
                                             threads=max(threads), batch=max(batches), seed=seed,
                                             trust=trust if takes_trust(name) else None,
                                             dims=dims[i]).to_dict()
                bar.update(1)
    finally:
        bar.close()

    infos = [ModelInfo(os.fspath(m), labels[i], chosen[i], files[i].kind, sizes[i], specs[i], mem[i],
                       files[i].conversion) for i, m in enumerate(models)]
    records = []
    for b in batches:
        for t in threads:
            ref = stats_at[(0, b, t)]
            for i, info in enumerate(infos):
                st = stats_at[(i, b, t)]
                records.append(Record(
                    info.model, info.label, info.backend, b, t, st, throughput(b, st.p50_ms),
                    ref.p50_ms / st.p50_ms if st.p50_ms > 0 else float("inf"),
                    labels[0], info.peak_mib, info.file_bytes / MIB,
                ))
    config = {
        "models": [os.fspath(m) for m in models], "batches": batches, "threads": threads,
        "backend": backend, "warmup": warmup, "repeat": repeat, "min_time": min_time,
        "memory": memory, "seed": seed, "input_shapes": list(input_shapes), "interleaved": True,
        "percentiles": "numpy linear interpolation", "inputs": INPUTS_DOC,
    }
    from sparsify.kernels import isa

    return BenchResult({**machine_info(), "isa": isa.host_isa()}, config, infos, records)
