"""2-D max pooling over NCHW planes (the runtime's MaxPool glue).

A window's positions outside the input (its padding) take no part, as ONNX says. Max is exact,
so finite inputs give ONNX Runtime's values bit for bit. NaN propagates as ``np.maximum``
does (ONNX Runtime's result for a window holding NaN depends on where in the window it
sits), and a window of -inf gives -inf.
"""

from __future__ import annotations

import numba
import numpy as np

from ._jit import serial
from .buffers import empty_with_slack
from .conv import POINTWISE_SLACK
from .errors import KernelArgumentError

# Below this many output values a call runs on one thread (a parallel launch costs a few
# microseconds).
SERIAL_VALUES = 1 << 14


@numba.njit(inline="always")
def _larger(m, v):
    """max(m, v), NaN on either side kept; bitwise | so that LLVM vectorizes the loops using it."""
    return m if (m != m) | (m > v) else v


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _max_pool2d(x, kh, kw, sh, sw, top, left, dh, dw, out):
    """out[n, c, i, j] = max over a < kh, b < kw of x[n, c, i*sh - top + a*dh, j*sw - left + b*dw],
    positions outside x left out; x and out are contiguous.

    Per output row: the window rows' column-wise max into a row padded with -inf (contiguous),
    then the taps along it."""
    n_img, chans, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    xf, of = x.reshape(-1), out.reshape(-1)
    span = max(left + width, (wo - 1) * sw + (kw - 1) * dw + 1)
    half = (span + 1) // 2
    span = 2 * half
    u = np.uintp
    for item in numba.prange(n_img * chans):
        hb = np.empty(span, x.dtype)
        hb[:] = -np.inf
        even = np.empty(half, x.dtype)
        odd = np.empty(half, x.dtype)
        for i in range(ho):
            for c in range(u(left), u(left + width)):
                hb[c] = -np.inf
            for a in range(kh):
                r = i * sh - top + a * dh
                if r < 0 or r >= height:
                    continue
                x0 = u((item * height + r) * width)
                for c in range(u(0), u(width)):
                    hb[u(left) + c] = _larger(hb[u(left) + c], xf[x0 + c])
            o0 = u((item * ho + i) * wo)
            if sw == 2 and dw == 1:
                # Even and odd columns apart first (LLVM vectorizes that pair of strided reads;
                # a strided read alone becomes a gather), then every tap is a contiguous read.
                for j in range(u(0), u(half)):
                    even[j] = hb[u(2) * j]
                    odd[j] = hb[u(2) * j + u(1)]
                for j in range(u(0), u(wo)):
                    of[o0 + j] = even[j]
                for b in range(1, kw):
                    src = odd if b % 2 else even
                    shift = u(b // 2)
                    for j in range(u(0), u(wo)):
                        of[o0 + j] = _larger(of[o0 + j], src[j + shift])
            else:
                for j in range(u(0), u(wo)):
                    of[o0 + j] = hb[u(sw) * j]
                for b in range(1, kw):
                    for j in range(u(0), u(wo)):
                        of[o0 + j] = _larger(of[o0 + j], hb[u(sw) * j + u(b * dw)])


_serial_max_pool2d = serial(_max_pool2d)


def _ints(name: str, value, least: int) -> tuple[int, int]:
    v = tuple(int(t) for t in value) if isinstance(value, (tuple, list)) else ()
    if len(v) != 2 or any(t < least for t in v) or any(isinstance(t, bool) for t in value):
        raise KernelArgumentError(f"max_pool2d {name} {value!r} should be two ints >= {least}")
    return v  # type: ignore[return-value]


def pooled_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    """Output length of one axis (floor rounding: ONNX's ceil_mode 0)."""
    return (size + pad_begin + pad_end - (kernel - 1) * dilation - 1) // stride + 1


def pool_window(kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1)):
    """The checked window of a 2-D max pool: ((kh, kw), (sh, sw), (top, left, bottom, right),
    (dh, dw)) as ints, each pad below the kernel's size on its axis (ONNX Runtime's rule);
    KernelArgumentError naming the bad one."""
    kh, kw = _ints("kernel", kernel, 1)
    steps = _ints("strides", strides, 1)
    dilated = _ints("dilations", dilations, 1)
    p = tuple(int(t) for t in pads) if isinstance(pads, (tuple, list)) else ()
    if len(p) != 4 or any(t < 0 for t in p) or max(p[0], p[2]) >= kh or max(p[1], p[3]) >= kw:
        raise KernelArgumentError(f"max_pool2d pads {pads!r} should be four ints >= 0 (top, left, bottom, right), "
                                  f"each below the kernel's size {(kh, kw)} on its axis")
    return (kh, kw), steps, p, dilated


def max_pool2d(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int] = (1, 1),
               pads: tuple[int, int, int, int] = (0, 0, 0, 0), dilations: tuple[int, int] = (1, 1)) -> np.ndarray:
    """ONNX ``MaxPool`` (2-D, ceil_mode 0) of a float32/float64 ``x`` (N, C, H, W); the window
    as :func:`pool_window` takes it, ``pads`` (top, left, bottom, right)."""
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or x.ndim != 4:
        raise KernelArgumentError(f"max_pool2d input should be a float32/float64 array (N, C, H, W), got {x!r:.80}")
    (kh, kw), (sh, sw), p, (dh, dw) = pool_window(kernel, strides, pads, dilations)
    n, c, h, w = x.shape
    ho, wo = pooled_size(h, kh, sh, p[0], p[2], dh), pooled_size(w, kw, sw, p[1], p[3], dw)
    if ho < 1 or wo < 1:
        raise KernelArgumentError(f"max_pool2d input of spatial size {(h, w)} is too small for kernel {(kh, kw)}, "
                                  f"dilations {(dh, dw)} and pads {p}: the output would be {(ho, wo)}")
    # With slack after it, as a sparse conv's output: a 1x1 conv reading it needs no copy.
    out = empty_with_slack((n, c, ho, wo), x.dtype, POINTWISE_SLACK * x.dtype.itemsize)
    if out.size:
        run = _max_pool2d if out.size >= SERIAL_VALUES else _serial_max_pool2d
        run(np.ascontiguousarray(x), kh, kw, sh, sw, p[0], p[1], dh, dw, out)
    return out
