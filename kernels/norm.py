"""Layer normalization over the last axis of a 2-D array (the runtime's LayerNormalization).

ONNX Runtime's LayerNormalization took ~130 us on a (128, 256) float32 input here (2
threads, 150 us on one), far more than the sparse products around it in a
transformer block; this kernel takes a few microseconds. Mean and variance are
accumulated in float64 (two passes), so the result is at least as accurate as a
float32 implementation.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._jit import serial
from .errors import KernelArgumentError

# Below this many values a call runs on one thread (a parallel launch costs ~2 us).
SERIAL_VALUES = 1 << 14


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy", inline="always")
def _normalize(xr, scale, bias, eps, o):
    """o = (xr - mean(xr)) / sqrt(var(xr) + eps) * scale + bias, accumulated in float64."""
    n = xr.shape[0]
    s = 0.0
    for j in range(n):
        s += np.float64(xr[j])
    mean = s / n
    v = 0.0
    for j in range(n):
        d = np.float64(xr[j]) - mean
        v += d * d
    inv = 1.0 / math.sqrt(v / n + eps)
    for j in range(n):
        o[j] = (np.float64(xr[j]) - mean) * inv * scale[j] + bias[j]


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"},
            error_model="numpy")
def _layer_norm_rows(x, scale, bias, eps, out):
    """out[r] = (x[r] - mean(x[r])) / sqrt(var(x[r]) + eps) * scale + bias for each row r."""
    for r in numba.prange(x.shape[0]):
        _normalize(x[r], scale, bias, eps, out[r])


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"},
            error_model="numpy")
def _add_layer_norm_rows(x, y, scale, bias, eps, out, total):
    """total[r] = x[r] + y[r], out[r] = layer_norm(total[r]) * scale + bias for each row r."""
    rows, n = x.shape
    for r in numba.prange(rows):
        xr, yr, t = x[r], y[r], total[r]
        for j in range(n):
            t[j] = xr[j] + yr[j]  # rounded to the input dtype, as a separate Add would
        _normalize(t, scale, bias, eps, out[r])


def add_layer_norm(x: np.ndarray, y: np.ndarray, scale: np.ndarray, bias: np.ndarray | None,
                   eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(layer_norm(x + y), x + y)`` over the rows of 2-D ``x`` and ``y`` of one shape: a
    residual Add and the LayerNormalization after it in one pass over the rows."""
    if not (isinstance(y, np.ndarray) and y.shape == getattr(x, "shape", None) and y.dtype == x.dtype):
        raise KernelArgumentError(f"add_layer_norm inputs should have one shape and dtype, got {x!r:.60} and {y!r:.60}")
    x, scale, bias = _checked_rows(x, scale, bias)
    y = np.ascontiguousarray(y)
    out, total = np.empty_like(x), np.empty_like(x)
    kernel = _add_layer_norm_rows if x.size >= SERIAL_VALUES else _serial_add_rows
    kernel(x, y, scale, bias, float(eps), out, total)
    return out, total


def _checked_rows(x, scale, bias):
    """(x, scale, bias) contiguous after the checks of :func:`layer_norm` (zero bias for None)."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype not in (np.float32, np.float64):
        raise KernelArgumentError(f"layer_norm input should be a 2-D float32/float64 array, got {x!r:.60}")
    n = x.shape[1]
    if bias is None:
        bias = np.zeros(n, x.dtype)
    for name, a in (("scale", scale), ("bias", bias)):
        if a.shape != (n,) or a.dtype != x.dtype:
            raise KernelArgumentError(f"layer_norm {name} should be ({n},) {x.dtype}, got {a.shape} {a.dtype}")
    return np.ascontiguousarray(x), np.ascontiguousarray(scale), np.ascontiguousarray(bias)


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, eps: float) -> np.ndarray:
    """Normalize each row of ``x`` (R, N) and apply ``scale``/``bias`` (N,) of x's dtype."""
    x, scale, bias = _checked_rows(x, scale, bias)
    out = np.empty_like(x)
    kernel = _layer_norm_rows if x.size >= SERIAL_VALUES else _serial_rows
    kernel(x, scale, bias, float(eps), out)
    return out


_serial_rows = serial(_layer_norm_rows)
_serial_add_rows = serial(_add_layer_norm_rows)
