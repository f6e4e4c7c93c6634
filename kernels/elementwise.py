"""A residual Add and the ReLU after it in one parallel pass (the runtime's Add + Relu glue).

One pass on the Session's threads replaces numpy's two single-threaded ones, which were a
large share of a sparse CNN's run (op breakdown in ``benchmarks/results/models_deploy.json``).
"""

from __future__ import annotations

import numba
import numpy as np

from ._jit import serial
from .buffers import empty_with_slack
from .conv import POINTWISE_SLACK
from .errors import KernelArgumentError

# Below this many values a call runs on one thread (a parallel launch costs a few microseconds).
SERIAL_VALUES = 1 << 15
# Values per parallel chunk: a contiguous run LLVM vectorizes.
CHUNK = 4096


@numba.njit(parallel=True, cache=True, nogil=True)
def _add_relu(x, y, zero, out):
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        s, e = c * CHUNK, min(n, (c + 1) * CHUNK)
        # Array expressions over the chunk, because LLVM vectorizes them and not an element loop
        # with the comparison; np.maximum propagates NaN as numpy's does.
        out[s:e] = np.maximum(x[s:e] + y[s:e], zero)


_serial_add_relu = serial(_add_relu)


def add_relu(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``max(x + y, 0)`` of two float32/float64 arrays of one shape and dtype, as a new array."""
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape and x.dtype == y.dtype
            and x.dtype in (np.float32, np.float64)):
        raise KernelArgumentError(f"add_relu inputs should be float32/float64 arrays of one shape and dtype, "
                                  f"got {x!r:.60} and {y!r:.60}")
    xf, yf = np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(y).reshape(-1)
    # With slack after it, as a sparse conv's output: a 1x1 conv reading it needs no copy.
    out = empty_with_slack(xf.shape, x.dtype, POINTWISE_SLACK * x.dtype.itemsize)
    (_add_relu if xf.size >= SERIAL_VALUES else _serial_add_relu)(xf, yf, x.dtype.type(0), out)
    return out.reshape(x.shape)
