"""How much memory a file or a declared shape may make sparsify allocate in one array.

A model file declares shapes, dims and attributes that size the arrays built from it
(benchmark feeds, padded conv inputs, dense initializers). A hostile or corrupted file
can declare 10^9 elements or more; such a request is refused before anything is
allocated, with an error that names what asked for it, instead of a numpy
``ArrayMemoryError`` or an out-of-memory kill.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np

from sparsify.errors import SparsifyError

# The limit is a quarter of this machine's physical memory: one array that size still leaves
# room for the model, the runtime's own buffers and other processes.
MEMORY_FRACTION = 0.25
# Bytes; overrides the fraction (for machines shared with other work, and for tests).
LIMIT_ENV = "SPARSIFY_MAX_ALLOC_BYTES"
INT64_MAX = (1 << 63) - 1


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def allocation_limit() -> int:
    """The largest array, in bytes, a file may make sparsify allocate (``SPARSIFY_MAX_ALLOC_BYTES``
    when set, else a quarter of physical memory, else 4 GiB)."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value <= 0:
            raise SparsifyError(f"{LIMIT_ENV}={text!r} should be a positive number of bytes")
        return value
    memory = physical_memory()
    return int(memory * MEMORY_FRACTION) if memory else 4 << 30


def elements(shape: Iterable[int]) -> int:
    """The number of elements of ``shape`` as a Python int (no int64 overflow)."""
    return math.prod(int(d) for d in shape)


def array_bytes(shape: Iterable[int], dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (Python ints, no overflow)."""
    return elements(shape) * np.dtype(dtype).itemsize


def human_bytes(n: int) -> str:
    """``n`` bytes as B / KiB / MiB / GiB / TiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def check_allocation(nbytes: int, what: str, error: type[SparsifyError]) -> None:
    """Raise ``error`` naming ``what`` when ``nbytes`` exceed :func:`allocation_limit`."""
    limit = allocation_limit()
    if nbytes > limit:
        raise error(f"{what} would allocate {human_bytes(nbytes)}, more than the limit of {human_bytes(limit)} "
                    f"(a quarter of this machine's memory; set {LIMIT_ENV} to change it)")


def check_int64(value: int, what: str, error: type[SparsifyError]) -> int:
    """``value`` when it fits an int64, else ``error`` naming ``what``."""
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise error(f"{what} is {value:.3e}, which overflows int64; the declared shapes cannot be right")
    return value
