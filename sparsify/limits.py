"""How much memory a file or a reference may make sparsify allocate before it is refused."""

from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np

from sparsify.errors import SparsifyError

# Environment override of the bound, in bytes.
ENV_MAX_BYTES = "SPARSIFY_MAX_BYTES"
# Share of the machine's physical memory one request may take: beyond it the machine would
# swap or the kernel kill the process instead of sparsify refusing the request.
MEMORY_SHARE = 0.5
_FALLBACK_BYTES = 8 << 30


def memory_limit() -> int:
    """Bytes one allocation requested by a file may take: ``$SPARSIFY_MAX_BYTES`` or half of RAM."""
    text = os.environ.get(ENV_MAX_BYTES)
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise SparsifyError(f"{ENV_MAX_BYTES}={text!r} should be a positive number of bytes")
        return value
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_BYTES
    return int(total * MEMORY_SHARE) if total > 0 else _FALLBACK_BYTES


def human_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_bytes(nbytes: int, what: str, error: type[SparsifyError] = SparsifyError) -> None:
    """Refuse ``what`` when it would allocate more than :func:`memory_limit` bytes."""
    limit = memory_limit()
    if nbytes > limit:
        raise error(f"{what} would allocate {human_bytes(nbytes)}, more than the limit of {human_bytes(limit)} "
                    f"(half of this machine's memory; set {ENV_MAX_BYTES} to change it)")


INT64_MAX = (1 << 63) - 1


def array_bytes(shape: Iterable[int], dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, in Python ints (no int64 overflow)."""
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def check_int64(value: int, what: str, error: type[SparsifyError] = SparsifyError) -> int:
    """``value`` when it fits an int64, else ``error`` naming ``what`` (a count no real model has)."""
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise error(f"{what} is {value:.3e}, which overflows int64; the declared shapes cannot be right")
    return value
