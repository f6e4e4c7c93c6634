"""Synthetic feeds for a model's inputs at a given batch size.

Shapes: the first dim of every input is the batch dim. It is set to the batch size when it
is dynamic (``None`` or a symbolic name) or when it is the static value 1 (a model exported
at batch 1 may still accept other batches; if it does not, the first run says so). A static
first dim other than 1 must equal the batch size. Other dynamic dims take their value from
``dims`` (by symbolic name; :func:`dims_from_shapes` reads them from ``--input-shape``), else
from the size the file records, else raise :class:`DataError`.

Values, from ``numpy.random.default_rng(seed)`` drawn input by input in spec order:
float inputs standard normal; integer inputs uniform in ``[int_low, int_high)`` (default
``[0, 10)``, safe for small embedding tables and class indices); bool inputs fair coin flips.
Inputs the file records (a run's manifest, or the ``sparsify.inputs`` metadata sparsify writes
into an exported ONNX file; see :func:`recorded_inputs`) take their recorded valid values
instead: token ids below the embedding's row count, 0/1 padding masks (ones, then zeros), and
their other dynamic dims (the sequence) take the recorded size.
The same seed, specs and batch give the same feeds, so models with the same inputs are
benchmarked on identical data. A shape whose feed would exceed the allocation limit
(:mod:`sparsify.limits`) is refused before anything is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sparsify.inputspec import INPUTS_METADATA, InputSpec
from sparsify.errors import DataError, SparsifyError
from sparsify.limits import array_bytes, check_bytes


def feed_shape(spec: InputSpec, batch: int, dims: Mapping[str, int] | None = None, where: str = "model") -> tuple[int, ...]:
    """The concrete shape of ``spec`` at ``batch``; see the module docstring for the rules."""
    dims = dims or {}
    shape: list[int] = []
    for i, d in enumerate(spec.shape):
        if i == 0 and (d is None or isinstance(d, str) or d == 1):
            shape.append(batch)
        elif i == 0 and d != batch:
            raise DataError(
                f"{where}: input {spec.name!r} has a static batch dim {d}; "
                f"cannot benchmark batch {batch} (expected batch {d}, or a model exported with a dynamic batch dim)"
            )
        elif isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        else:
            raise DataError(
                f"{where}: input {spec.name!r} has the dynamic dim {i} ({d!r}) and no size for it is recorded or "
                "given; give one --input-shape per input, in order (e.g. --input-shape 1,128; its batch dim is "
                "ignored), to size it"
            )
    return tuple(shape)


def dims_from_shapes(specs: Sequence[InputSpec], shapes: Sequence[str], where: str = "model") -> dict[str, int]:
    """Sizes of the named dynamic dims of ``specs`` from ``--input-shape`` texts (one per input,
    in order; the batch axis is left to the batch size); DataError when a shape does not fit
    its input. They take precedence over the sizes a file records."""
    from sparsify.data import parse_input_shape

    if not shapes:
        return {}
    if len(shapes) != len(specs):
        raise DataError(f"got {len(shapes)} --input-shape for {where}, which has {len(specs)} input(s) "
                        f"{[s.name for s in specs]}; give one per input, in order")
    dims: dict[str, int] = {}
    for spec, text in zip(specs, shapes):
        shape = parse_input_shape(text)
        if len(shape) != len(spec.shape):
            raise DataError(f"--input-shape {text} has {len(shape)} dims; input {spec.name!r} of {where} has "
                            f"{len(spec.shape)} ({list(spec.shape)})")
        for axis, (d, size) in enumerate(zip(spec.shape, shape)):
            if axis == 0:
                continue
            if isinstance(d, int) and d != size:
                raise DataError(f"--input-shape {text}: dim {axis} of input {spec.name!r} is fixed at {d} in "
                                f"{where}, not {size}")
            if isinstance(d, str):
                dims[d] = size
    return dims


def recorded_inputs(path: str | os.PathLike) -> dict[str, dict]:
    """Input name -> recorded spec (``sparsify.inputspec.InputSpec.to_dict``) of a run directory or of
    an ONNX file exported by sparsify; empty when the file records none."""
    import json

    p = Path(path)
    try:
        if p.is_dir():
            from sparsify.artifact import read_manifest

            entries = read_manifest(p)["inputs"]
        else:
            from sparsify.onnxfile import load_onnx

            meta = {e.key: e.value for e in load_onnx(p).metadata_props}
            entries = json.loads(meta[INPUTS_METADATA]) if INPUTS_METADATA in meta else []
    except (SparsifyError, KeyError, ValueError, TypeError):  # no usable record: plain random feeds
        return {}
    if not isinstance(entries, list):
        return {}
    return {e["name"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)}


def _recorded_dims(spec: InputSpec, rec: Mapping | None) -> dict[str, int]:
    """Sizes of the spec's symbolic non-batch dims, read off the recorded example shape."""
    shape = rec.get("shape") if rec else None
    if not isinstance(shape, list) or len(shape) != len(spec.shape):
        return {}
    return {d: int(shape[i]) for i, d in enumerate(spec.shape) if i > 0 and isinstance(d, str)
            and isinstance(shape[i], int) and shape[i] > 0}


def _padding_mask(rng: np.random.Generator, shape: tuple[int, ...], dt: np.dtype) -> np.ndarray:
    """Ones then zeros along the last axis, at least one 1 per row (the first row unpadded)."""
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    lengths = rng.integers(1, shape[-1] + 1, size=(rows, 1)) if shape[-1] else np.zeros((rows, 1), np.int64)
    lengths[0] = shape[-1]
    return (np.arange(shape[-1])[None, :] < lengths).astype(dt).reshape(shape)


def make_feeds(
    specs: Sequence[InputSpec],
    batch: int,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    int_range: tuple[int, int] = (0, 10),
    where: str = "model",
    recorded: Mapping[str, Mapping] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random feeds (input name -> C-contiguous array) for ``specs`` at ``batch``;
    ``recorded`` (see :func:`recorded_inputs`) gives valid values and dynamic sizes by name."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        rec = (recorded or {}).get(spec.name)
        shape = feed_shape(spec, batch, {**_recorded_dims(spec, rec), **(dims or {})}, where)
        dt = np.dtype(spec.dtype)
        low, high = int_range
        if rec and rec.get("values") == "index" and isinstance(rec.get("high"), int):
            low, high = int(rec.get("low", 0)), int(rec["high"])
        # Floats are drawn in float64, then cast: both arrays exist at once.
        drawn = np.float64 if np.issubdtype(dt, np.floating) else dt
        check_bytes(array_bytes(shape, dt) + (array_bytes(shape, drawn) if drawn != dt else 0),
                         f"{where}: input {spec.name!r} of shape {list(shape)} ({dt}) at batch {batch}", DataError)
        if rec and rec.get("values") == "mask" and (np.issubdtype(dt, np.integer) or dt == np.bool_):
            arr = _padding_mask(rng, shape, dt)
        elif dt == np.bool_:
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            arr = rng.integers(low, high, size=shape, dtype=dt)
        elif np.issubdtype(dt, np.floating):
            arr = rng.standard_normal(size=shape).astype(dt)
        else:
            raise DataError(f"{where}: input {spec.name!r} has dtype {dt}; expected a float, integer or bool input")
        feeds[spec.name] = np.ascontiguousarray(arr)
    return feeds
