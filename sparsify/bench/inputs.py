"""Synthetic feeds for a model's inputs at a given batch size.

Shapes: the first dim of every input is the batch dim. It is set to the batch size when it
is dynamic (``None`` or a symbolic name) or when it is the static value 1 (a model exported
at batch 1 may still accept other batches; if it does not, the first run says so). A static
first dim other than 1 must equal the batch size. Other dynamic dims take their value from
``dims`` (by symbolic name), else raise :class:`DataError`.

Values, from ``numpy.random.default_rng(seed)`` drawn input by input in spec order:
float inputs standard normal; integer inputs uniform in ``[int_low, int_high)`` (default
``[0, 10)``, safe for small embedding tables and class indices); bool inputs fair coin flips.
The same seed, specs and batch give the same feeds, so models with the same inputs are
benchmarked on identical data. A shape whose feed would exceed the allocation limit
(:mod:`sparsify.limits`) is refused before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sparsify.bench.backends import InputSpec
from sparsify.errors import DataError
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
                f"{where}: input {spec.name!r} has dynamic dim {i} ({d!r}) besides the batch dim; "
                f"expected a value for it in dims, got {dict(dims)}"
            )
    return tuple(shape)


def make_feeds(
    specs: Sequence[InputSpec],
    batch: int,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    int_range: tuple[int, int] = (0, 10),
    where: str = "model",
) -> dict[str, np.ndarray]:
    """Seeded random feeds (input name -> C-contiguous array) for ``specs`` at ``batch``."""
    rng = np.random.default_rng(seed)
    low, high = int_range
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = feed_shape(spec, batch, dims, where)
        dt = np.dtype(spec.dtype)
        # Floats are drawn in float64, then cast: both arrays exist at once.
        drawn = np.float64 if np.issubdtype(dt, np.floating) else dt
        check_bytes(array_bytes(shape, dt) + (array_bytes(shape, drawn) if drawn != dt else 0),
                         f"{where}: input {spec.name!r} of shape {list(shape)} ({dt}) at batch {batch}", DataError)
        if dt == np.bool_:
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            arr = rng.integers(low, high, size=shape, dtype=dt)
        elif np.issubdtype(dt, np.floating):
            arr = rng.standard_normal(size=shape).astype(dt)
        else:
            raise DataError(f"{where}: input {spec.name!r} has dtype {dt}; expected a float, integer or bool input")
        feeds[spec.name] = np.ascontiguousarray(arr)
    return feeds
