"""Depthwise 2-D convolution of NCHW arrays (the runtime's depthwise Conv glue), clips fused.

Each input channel is convolved with its own M kernels (depth multiplier M), giving output
channels c*M .. c*M + M - 1, as ONNX ``Conv`` with ``group`` equal to the input channels.
A clip of the input (a Clip before the Conv) and of the output (a Clip or Relu after it)
can be applied in the same pass.

Three kernels, chosen by structure:

- A 3x3 kernel with padding 1 and stride 1, or stride 2 with output rows of at least 16
  (MobileNet's depthwise convolutions but the smallest), has its own kernel
  (``_depthwise3x3_jit.py``), which copies one input plane at a time into a zero-padded
  buffer and computes a whole output plane as one run of vectors along the plane.
- Every other conv (``_depthwise_jit.py``) runs its input channels in blocks of 16
  (``_simd.PIXEL_LANES``): a block's input is transposed into a buffer of pixel vectors
  (one value per channel, one cache line in float32) between the left and right padding's
  zeros, each kernel tap is then one aligned vector load times a vector of the 16
  channels' weights (kernel rows on the top or bottom padding are skipped), a row's output
  pixels are accumulated in registers (``_simd.row_taps``) and transposed back to the NCHW
  planes.
- The channels past the last whole block (C mod 16 of them) run plane by plane, as do all
  channels of a weight holding inf or NaN (its products with the padding's zeros are NaN,
  which the other two kernels would leave out): each plane is copied into a zero-padded
  polyphase buffer laid out so that every kernel tap reads a contiguous run at a fixed
  offset from the output position; runs of output rows over the padded width are computed
  and their valid columns copied out.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from ._depthwise3x3_jit import depthwise3x3_kernel, serial_depthwise3x3_kernel
from ._depthwise_jit import LANES, PIXELS, PIXELS2, SEGMENT, VEC, depthwise_kernel, serial_depthwise_kernel
from .buffers import Scratch, empty_with_slack
from .conv import POINTWISE_SLACK
from .errors import KernelArgumentError

# Below this much work (multiply-adds plus input values copied) a call runs on one thread:
# measured here (3x3, stride 1, 2 threads, Numba's tbb layer), one thread took 6.2 us for
# 1.3e5 against 8.0 us on two, and both ~10.5 us for 2.5e5. (The smallest MobileNetV2
# depthwise layer, 960 x 7 x 7, has 4.7e5.)
SERIAL_WORK = 1 << 18
# Parallel chunks per thread: more than one lets a thread that other work delays fall behind
# without holding up the others.
CHUNKS_PER_THREAD = 2
# The same for the blocked kernel, whose tasks are bands of equal work: a second chunk per
# thread only splits the blocks into more bands, whose overlapping input rows are transposed
# twice (measured: benchmarks/README.md, "Depthwise convolutions").
BLOCK_CHUNKS_PER_THREAD = 1
# The blocked kernel's buffers: one per calling thread, shared by every convolution.
_SCRATCH = Scratch()


def _ints(value, count: int, name: str, least: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``count`` ints >= ``least``, else KernelArgumentError naming ``name``."""
    items = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(items) != count or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= least
                                      for v in items):
        raise KernelArgumentError(f"depthwise_conv2d {name} should be {count} ints >= {least}, got {value!r}")
    return tuple(int(v) for v in items)


def _bounds(bounds, name: str) -> tuple[float, float]:
    """(lo, hi) of ``bounds``; (-inf, inf) for None."""
    if bounds is None:
        return -math.inf, math.inf
    try:
        lo, hi = bounds
        if isinstance(lo, bool) or isinstance(hi, bool):
            raise TypeError
        return float(lo), float(hi)
    except (TypeError, ValueError):
        raise KernelArgumentError(f"depthwise_conv2d {name} should be None or two numbers (lo, hi), "
                                  f"got {bounds!r}") from None


class _Plan(NamedTuple):
    """How :class:`DepthwiseConv2d` runs an input shape."""

    shape: tuple[int, int, int, int]  # the output's
    parallel: bool  # the parallel kernel, not its serial twin (SERIAL_WORK)
    fast: bool  # the 3x3 kernel
    # The blocked kernel's buffer pitch, scratch values per task (0: no whole block), pixel
    # table and tap table (``depthwise_kernel``).
    pitch: int
    values: int
    pixels: np.ndarray
    taps: np.ndarray


class DepthwiseConv2d:
    """A depthwise convolution with its weight checked and laid out once: ``conv(x)`` gives
    what :func:`depthwise_conv2d` gives for the same arguments."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None, stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int, int, int] = (0, 0, 0, 0), dilation: tuple[int, int] = (1, 1),
                 activation_bounds: tuple[float, float] | None = None,
                 input_bounds: tuple[float, float] | None = None) -> None:
        if (not isinstance(weight, np.ndarray) or weight.ndim != 4 or weight.dtype not in (np.float32, np.float64)
                or weight.shape[1] != 1 or min(weight.shape) < 1):
            raise KernelArgumentError(f"depthwise_conv2d weight should be a float32/float64 array of shape "
                                      f"(C*M, 1, kH, kW), all sizes >= 1, got {weight!r:.80}")
        c_out, _, kh, kw = weight.shape
        dtype = weight.dtype
        if bias is not None and (not isinstance(bias, np.ndarray) or bias.shape != (c_out,) or bias.dtype != dtype):
            raise KernelArgumentError(f"depthwise_conv2d bias should be None or ({c_out},) {dtype}, got {bias!r:.80}")
        self.stride = _ints(stride, 2, "stride", 1)
        self.dilation = _ints(dilation, 2, "dilation", 1)
        self.padding = _ints(padding, 4, "padding (top, left, bottom, right)", 0)
        self.dtype = dtype
        self.kernel_shape = (kh, kw)
        self.out_channels = c_out
        self._w = np.ascontiguousarray(weight.reshape(c_out, kh * kw))
        self._b = np.zeros(c_out, dtype) if bias is None else np.ascontiguousarray(bias)
        # Compared in the data's dtype, as ONNX Clip's bounds are.
        self._clips = tuple(dtype.type(v) for v in (*_bounds(input_bounds, "input_bounds"),
                                                    *_bounds(activation_bounds, "activation_bounds")))
        # The 3x3 and blocked kernels leave out taps that meet the padding; the plane kernel
        # multiplies them by its zeros, so a weight of inf or NaN there gives NaN, as ONNX's Conv.
        self._finite = bool(np.isfinite(self._w).all())
        self._three = ((kh, kw) + self.dilation + self.padding == (3, 3, 1, 1, 1, 1, 1, 1)
                       and self.stride in ((1, 1), (2, 2)) and self._finite)
        self._plans: dict[tuple[int, ...], _Plan] = {}
        self._blocked: dict[int, np.ndarray] = {}

    def _plan(self, shape: tuple[int, ...]) -> _Plan:
        """How an input of ``shape`` runs, after checking it fits."""
        n, c, h, w = shape
        c_out, (kh, kw) = self.out_channels, self.kernel_shape
        if c < 1 or c_out % c:
            raise KernelArgumentError(f"depthwise_conv2d input has {c} channels, but the weight's {c_out} output "
                                      f"channels should be a multiple of them (C*M, 1, kH, kW)")
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.stride, self.dilation, self.padding
        span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        if h + pt + pb < span_h or w + pl + pr < span_w:
            raise KernelArgumentError(f"depthwise_conv2d kernel spans {span_h} x {span_w} (kernel {kh} x {kw}, "
                                      f"dilation {dh} x {dw}), more than the padded input's "
                                      f"{h + pt + pb} x {w + pl + pr}")
        out = (n, c_out, (h + pt + pb - span_h) // sh + 1, (w + pl + pr - span_w) // sw + 1)
        ho, wo = out[2], out[3]
        # The 3x3 kernel where it applies, but at stride 2 for rows of fewer than VEC outputs,
        # where its polyphase copy does not vectorize: on MobileNetV2's shapes it measured
        # faster than the blocked kernel but there (benchmarks/README.md, "Depthwise convolutions").
        fast = self._three and (sh == 1 or wo >= VEC)
        pitch = (max(wo, PIXELS, PIXELS2) - 1) * sw + span_w
        blocked = c >= LANES and not fast and self._finite
        rows, cols = np.arange(h if blocked else 0), np.arange(w if blocked else 0) + pl
        pixels = np.where(cols < pitch, rows[:, None] * pitch + cols, h * pitch)
        taps = (np.arange(kh)[:, None] * dh * pitch + np.arange(kw) * dw) * LANES
        values = (h * pitch + 1 + max(SEGMENT, wo) + LANES + max(PIXELS, PIXELS2)) * LANES
        plan = _Plan(out, n * (c_out * ho * wo * kh * kw + c * h * w) >= SERIAL_WORK, fast, pitch,
                     values if blocked else 0, pixels.astype(np.int64).reshape(-1), taps.astype(np.int64).reshape(-1))
        if len(self._plans) < 64:
            self._plans[shape] = plan
        return plan

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The convolution of ``x`` (N, C, H, W) of the weight's dtype: a new (N, C*M, Ho, Wo) array."""
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != self.dtype:
            raise KernelArgumentError(f"depthwise_conv2d input should be a 4-D (N, C, H, W) {self.dtype} array "
                                      f"(the weight's dtype), got {x!r:.80}")
        plan = self._plans.get(x.shape)
        shape, parallel, fast, pitch, values, pixels, taps = self._plan(x.shape) if plan is None else plan
        # With slack after it, as a sparse conv's output: a 1x1 conv reading it needs no copy.
        out = empty_with_slack(shape, self.dtype, POINTWISE_SLACK * self.dtype.itemsize)
        if out.size == 0:
            return out
        x = np.ascontiguousarray(x)
        n, c = x.shape[:2]
        if fast:
            chunks = min(n * c, CHUNKS_PER_THREAD * numba.get_num_threads()) if parallel else 1
            kernel = depthwise3x3_kernel if parallel else serial_depthwise3x3_kernel
            kernel(x, self._w, self._b, self.stride[0], *self._clips, out, chunks)
            return out
        whole, bands, chunks = c // LANES if values else 0, 1, 1
        if parallel:
            # Whole blocks split into bands of output rows so that every task gets as many.
            planes = c - whole * LANES
            chunks = min(n * (whole * shape[2] + planes), BLOCK_CHUNKS_PER_THREAD * numba.get_num_threads())
            if whole:
                bands = min(shape[2], chunks // math.gcd(n * whole, chunks))
        kernel = depthwise_kernel if parallel else serial_depthwise_kernel
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_shape, self.stride, self.dilation
        kernel(x, self._w, self._b, self._blocked_weights(c, whole), pixels, taps, kh, kw, sh, sw, dh, dw,
               self.padding[0], self.padding[1], *self._clips, out, _SCRATCH.get((chunks * values,), self.dtype),
               values, pitch, whole, bands, chunks)
        return out

    def _blocked_weights(self, c: int, whole: int) -> np.ndarray:
        """The blocked kernel's weights for ``c`` input channels of which the first ``whole``
        blocks run blocked (``depthwise_kernel``'s ``wb``): per block b and multiplier index m, the
        bias, then each tap's weights, of output channels (16b + l)*M + m, l < 16."""
        wb = self._blocked.get(c) if whole else None
        if wb is None:
            m = self.out_channels // c
            taps = self._w.shape[1]
            used = whole * LANES * m
            wb = np.empty((whole, m, 1 + taps, LANES), self.dtype)
            wb[:, :, 0] = self._b[:used].reshape(whole, LANES, m).transpose(0, 2, 1)
            wb[:, :, 1:] = self._w[:used].reshape(whole, LANES, m, taps).transpose(0, 2, 3, 1)
            wb = wb.reshape(whole * m, (1 + taps) * LANES)
            if whole and len(self._blocked) < 8:
                self._blocked[c] = wb
        return wb


def depthwise_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                     stride: tuple[int, int] = (1, 1), padding: tuple[int, int, int, int] = (0, 0, 0, 0),
                     dilation: tuple[int, int] = (1, 1), activation_bounds: tuple[float, float] | None = None,
                     input_bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Depthwise convolution of ``x`` (N, C, H, W) with ``weight`` (C*M, 1, kH, kW), as ONNX
    ``Conv`` with ``group=C``: output channel c*M + m convolves input channel c.

    ``padding`` is ONNX's (top, left, bottom, right) zero padding; ``bias`` is (C*M,) or None.
    ``activation_bounds`` (lo, hi) clips the output as ONNX ``Clip`` does: values below lo
    become lo, then values above hi become hi, and NaN stays NaN; ``input_bounds`` clips the
    input so before the convolution (the padding stays 0). x, weight and bias share one
    dtype, float32 or float64; the result is a new C-contiguous (N, C*M, Ho, Wo) array of it.
    Repeated calls with one weight are cheaper through :class:`DepthwiseConv2d`.
    """
    return DepthwiseConv2d(weight, bias, stride, padding, dilation, activation_bounds, input_bounds)(x)
