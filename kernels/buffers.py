"""Scratch buffers aligned to cache lines, reused across calls."""

from __future__ import annotations

import math
import threading

import numba
import numpy as np

# Bytes: one cache line, and one 512-bit vector.
ALIGN = 64


def readable_after(a: np.ndarray) -> int:
    """Bytes that may be read past the end of C-contiguous ``a`` inside the buffer it views
    (0 when ``a`` is not C-contiguous or that buffer is not an ndarray's)."""
    base = a.base  # numpy points a view's base at the array that owns the memory
    if not isinstance(base, np.ndarray) or base.base is not None or not (a.flags.c_contiguous
                                                                         and base.flags.c_contiguous):
        return 0
    if a.dtype in _ADDRESSED and base.dtype in _ADDRESSED:
        # A jitted address difference: __array_interface__ builds a dict per call, ~1 us each.
        return max(0, _bytes_after(a, base))
    end = a.__array_interface__["data"][0] + a.nbytes
    return max(0, base.__array_interface__["data"][0] + base.nbytes - end)


# The dtypes _bytes_after compiles for (Numba has no float16 arrays).
_ADDRESSED = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.uint8, np.int8, np.int16, np.int32,
                                             np.int64, np.uint16, np.uint32, np.uint64, np.bool_))


@numba.njit(cache=True, nogil=True)
def _bytes_after(a, base):
    """Bytes of ``base`` after the end of ``a``, a view into it."""
    return base.ctypes.data + base.size * base.itemsize - (a.ctypes.data + a.size * a.itemsize)


def empty_with_slack(shape: tuple[int, ...], dtype, slack: int) -> np.ndarray:
    """An uninitialised C-contiguous array with ``slack`` bytes after its end that may be read
    (their values are arbitrary): a kernel may read whole vectors past the last row
    (``readable_after``)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    return np.empty(count + -(-slack // dtype.itemsize), dtype)[:count].reshape(shape)


def aligned_empty(shape, dtype, align: int = ALIGN) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary.

    numpy only guarantees 16-byte alignment. The SpMM kernel loads one 32/64/128-byte
    vector per nonzero from the packed input, so with 16-byte alignment some of those
    loads straddle two cache lines; which ones depends on where malloc put the buffer.
    Measured (4096² 90% layer, batch 8, 2 threads, five processes each): numpy buffers
    0.50-0.93 ms depending on the process, aligned ones 0.55-0.59 ms every time.
    """
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-raw.__array_interface__["data"][0]) % align
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


# Views a Scratch keeps per thread (one per shape and dtype it was asked for).
VIEWS_KEPT = 64


class Scratch:
    """One aligned scratch buffer per calling thread, grown on demand and then reused.

    A fresh aligned buffer per call measured 35 us slower per call than a reused one
    (4096² layer, batch 1), far more than the allocation itself. ``get`` returns a view
    that stays valid until the same thread calls ``get`` again on this object.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised aligned C-contiguous array of ``shape`` and ``dtype``."""
        local = self._local
        views = getattr(local, "views", None)
        # Each (shape, dtype) view is made once per buffer: making it costs ~4 us, more than
        # a small kernel call.
        key = (shape, dtype)
        view = None if views is None else views.get(key)
        if view is not None:
            return view
        dtype = np.dtype(dtype)
        nbytes = math.prod(int(n) for n in shape) * dtype.itemsize
        buf = getattr(local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = local.buf = aligned_empty(max(nbytes, 1), np.uint8)
            views = local.views = {}
        elif views is None or len(views) >= VIEWS_KEPT:
            views = local.views = {}
        view = views[key] = buf[:nbytes].view(dtype).reshape(shape)
        return view
