"""Sparse 2-D convolution (NCHW) with a CSR weight: direct for stride 1, else im2col + SpMM.

The weight is torch's ``conv.weight.reshape(out_channels, -1)`` as a CSR of shape
(out_channels, in_channels // groups * kh * kw).

- Stride 1 (any kernel size, padding, dilation): the input is copied once into a
  zero-padded buffer and each nonzero (channel, tap) becomes an offset into it; every
  output row is a sum over the channel's nonzeros of shifted input rows, computed
  ``width`` columns at a time with the accumulators in registers. Nothing is unfolded,
  so the work is nnz * Ho * Wo multiply-adds plus one copy of the input.
- Other strides: blocks of images are unfolded into the SpMM kernel's packed input
  layout (a buffer of at most ~8 MiB unless one image needs more), then multiplied.

Grouped convs run one kernel call per group (correct for any ``groups``, but depthwise
convs pay one launch per channel: they are not a fast path).
"""

from __future__ import annotations

import numpy as np

from . import _jit, isa
from .buffers import Scratch
from .csr import CSR
from .errors import KernelArgumentError
from .spmm import RowChunks, activation_code, checked, launch, pick_tile, prepare_bias, widest_tile

_COLS_BUDGET_BYTES = 8 << 20


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= minimum for v in pair):
        raise KernelArgumentError(
            f"{name} {value!r} should be an int >= {minimum} or a pair of them")
    return int(pair[0]), int(pair[1])


class SparseConv2d:
    """A prepared sparse conv: ``conv(x)`` equals ``act(torch.nn.functional.conv2d(x, W, b, ...))``.

    ``kernel_size``, ``stride``, ``padding``, ``dilation`` are ints or (h, w) pairs
    (zero padding only); ``groups`` must divide the output channels. ``x`` is
    (N, C, H, W) with the weight's dtype; C = groups * weight.shape[1] / (kh * kw).
    """

    def __init__(self, weight: CSR, bias=None, kernel_size=1, stride=1, padding=0, dilation=1,
                 groups: int = 1, activation: str | None = None) -> None:
        self.weight = checked(weight)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        if not isinstance(groups, (int, np.integer)) or groups < 1:
            raise KernelArgumentError(f"groups {groups!r} should be a positive int")
        self.groups = int(groups)
        out_ch, k = weight.shape
        kh, kw = self.kernel_size
        if k % (kh * kw):
            raise KernelArgumentError(
                f"weight has {k} columns, which should be a multiple of kh*kw = {kh * kw}")
        if out_ch % self.groups:
            raise KernelArgumentError(
                f"weight has {out_ch} output channels, which should be a multiple of groups = {groups}")
        self.out_channels = out_ch
        self.in_channels = self.groups * (k // (kh * kw))
        self.dtype = weight.dtype
        self.bias = prepare_bias(bias, out_ch, self.dtype)
        self.activation = activation
        self._act = activation_code(activation)
        per = out_ch // self.groups
        self._scratch = Scratch()  # the padded (stride 1) or unfolded input
        self._offset_cache: dict[tuple[int, int], list[np.ndarray]] = {}
        self._parts = []
        for g in range(self.groups):
            part = weight if self.groups == 1 else weight.row_slice(g * per, (g + 1) * per)
            self._parts.append((part, self.bias[g * per:(g + 1) * per].copy(), RowChunks(part.indptr)))

    def __repr__(self) -> str:
        return (f"SparseConv2d({self.weight!r}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"activation={self.activation!r})")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(Ho, Wo) for an input of spatial size (height, width)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        return ((height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The conv of ``x`` (N, C, H, W) -> (N, out_channels, Ho, Wo)."""
        if not isinstance(x, np.ndarray):
            raise KernelArgumentError(f"input should be a numpy array, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise KernelArgumentError(
                f"input dtype {x.dtype} should be {self.dtype} (the weight's dtype); convert it explicitly")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise KernelArgumentError(
                f"input shape {x.shape} should be (N, {self.in_channels}, H, W)")
        n, c, h, w = x.shape
        ho, wo = self.output_size(h, w)
        if ho < 1 or wo < 1:
            raise KernelArgumentError(
                f"input spatial size ({h}, {w}) is too small for kernel {self.kernel_size}, "
                f"padding {self.padding}, dilation {self.dilation}: output would be ({ho}, {wo})")
        o, p = self.out_channels, ho * wo
        y = np.empty((n, o, ho, wo), dtype=self.dtype)
        if n == 0 or o == 0:
            return y
        x = np.ascontiguousarray(x)
        if self.stride == (1, 1):
            self._direct(x, y)
            return y
        flat = y.reshape(-1)
        tile = pick_tile(p, widest_tile())
        n_tiles = -(-p // tile)
        variant, n_chunks = launch(self.weight.nnz * n * p)
        kernel = variant(_jit.spmm_kernel(tile))
        unfold = variant(_jit.im2col)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        cg = c // self.groups
        per = o // self.groups
        rows_k = cg * kh * kw
        block = max(1, min(n, _COLS_BUDGET_BYTES // max(1, rows_k * n_tiles * tile * x.itemsize)))
        cols = self._scratch.get((block, n_tiles, rows_k, tile), self.dtype)
        group = _jit.tile_group(rows_k, tile, x.itemsize)
        for n0 in range(0, n, block):
            m = min(block, n - n0)
            buf = cols[:m]
            for g, (part, bias, chunks) in enumerate(self._parts):
                unfold(x, n0, g * cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, buf)
                kernel(part.data, part.indices, part.indptr, buf, bias, self._act,
                       flat, n0 * o * p + g * per * p, o * p, tile, p, 1, p, group, _jit.BLOCK_NNZ,
                       chunks.bounds(n_chunks))
        return y

    def _direct(self, x: np.ndarray, y: np.ndarray) -> None:
        """The stride-1 conv of contiguous ``x`` into ``y`` through the direct kernel."""
        n, c, h, w = x.shape
        o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
        kw, (ph, pw), dw = self.kernel_size[1], self.padding, self.dilation[1]
        # Two sets of SHIFTED_ROWS accumulators of width/lanes registers each: with AVX2's
        # or SSE's 16 registers only width 8 keeps them to half the register file.
        width = pick_tile(wo, widest_tile() if isa.VARIANT == "avx512" else 8)
        # Room for whole column steps, and rows below the image for whole row steps.
        hp = h + 2 * ph + (-ho) % _jit.SHIFTED_ROWS
        wx = max(w + 2 * pw, -(-wo // width) * width + (kw - 1) * dw)
        offsets = self._offsets(hp, wx)
        xpad = self._scratch.get((n, c, hp, wx), self.dtype)
        variant, n_chunks = launch(self.weight.nnz * n * ho * wo)
        variant(_jit.pad_input)(x, ph, pw, xpad)
        kernel = variant(_jit.direct_conv_kernel(width))
        per = o // self.groups
        for g, (part, bias, chunks) in enumerate(self._parts):
            kernel(part.data, offsets[g], part.indptr, xpad.reshape(-1), bias, self._act,
                   y.reshape(-1), g * per * ho * wo, n, c * hp * wx, o * ho * wo, ho, wo, wx,
                   chunks.bounds(n_chunks))

    def _offsets(self, hp: int, wx: int) -> list[np.ndarray]:
        """Per group, each nonzero's offset into one padded image of (C, hp, wx) (cached)."""
        key = (hp, wx)
        found = self._offset_cache.get(key)
        if found is None:
            (kh, kw), (dh, dw) = self.kernel_size, self.dilation
            cg = self.in_channels // self.groups
            found = []
            for g, (part, _, _) in enumerate(self._parts):
                k = part.indices.astype(np.int64)
                chan = g * cg + k // (kh * kw)
                tap_i, tap_j = (k // kw) % kh, k % kw
                found.append(chan * hp * wx + tap_i * dh * wx + tap_j * dw)
            self._offset_cache[key] = found
        return found


def csr_conv2d(x: np.ndarray, w: CSR, bias=None, kernel_size=1, stride=1, padding=0, dilation=1,
               groups: int = 1, activation: str | None = None) -> np.ndarray:
    """NCHW conv with a CSR weight (out, in/groups*kh*kw); see SparseConv2d."""
    return SparseConv2d(w, bias, kernel_size, stride, padding, dilation, groups, activation)(x)
