"""Sparse 2-D convolution (NCHW) with a CSR weight: pointwise for 1x1, direct otherwise.

The weight is torch's ``conv.weight.reshape(out_channels, -1)`` as a CSR of shape
(out_channels, in_channels // groups * kh * kw).

- 1x1 without padding (any stride): a strided conv's input is subsampled first; then every
  output channel is a sum over its nonzeros of whole input channels, computed
  SHIFTED_ROWS * width positions at a time straight from the input (the last partial step
  too, reading on into slack after the input: the slack every conv's output has, else a flat
  copy's) with the accumulators in registers, stored straight into the output.
- Otherwise (any kernel size, stride, padding, dilation): the input is copied once into a
  zero-padded buffer, split into stride_h * stride_w phase planes when strided, and each
  nonzero (channel, tap) becomes an offset into it; every output row is a sum over the
  channel's nonzeros of shifted input rows, computed ``width`` columns at a time with the
  accumulators in registers. Nothing is unfolded, so the work is nnz * Ho * Wo
  multiply-adds plus one copy of the input.

``with_residual(x, residual, activation)`` adds a residual (ResNet's shortcut) to each block of
outputs in registers before the clip, with the ReLU or ReLU6 after the Add as the clip: the
Add costs no pass of its own over the output.

Grouped convs run one kernel call per group (correct for any ``groups``, but depthwise
convs pay one launch per channel: they are not a fast path).

A weight pruned in R x 1 blocks (R output channels sharing each (channel, tap); a
:class:`~.bsr.BSR` with blocksize (R, 1), R in 2, 4, 8, 16, ``groups`` 1) runs the block
kernels of the same two shapes: each loaded input vector serves RR of the block's channels
(:func:`block_geometry`). Other block shapes and grouped convs run as CSR.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _bsr_jit, _jit, isa
from .bsr import BSR
from .buffers import Scratch, empty_with_slack, readable_after
from .csr import CSR
from .errors import KernelArgumentError
from .spmm import RowChunks, activation_code, checked, launch, pick_tile, prepare_bias, widest_tile


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

    def __init__(self, weight: CSR | BSR, bias=None, kernel_size=1, stride=1, padding=0, dilation=1,
                 groups: int = 1, activation: str | None = None) -> None:
        # (r, rows per pass, shifted rows, width) of the block kernels, or None (CSR kernels).
        self._block: tuple[int, int, int, int] | None = None
        if isinstance(weight, BSR):
            if conv_block(weight.blocksize, groups):
                weight.check_format()
                self._block = block_geometry(weight.blocksize[0], isa.VARIANT)
            else:
                weight = weight.to_csr()
        self.weight = weight if self._block else checked(weight)
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
        self._step_widths: dict[tuple[int, int], int] = {}  # (H, W) of the input -> width set for it
        self._offset_cache: dict[tuple[int, int], list[np.ndarray]] = {}
        self._parts = []
        if self._block:  # one part: the block pattern (its indices are the weight's columns)
            self._values = weight.kernel_values()
            self._parts.append((weight.pattern, self.bias, RowChunks(weight.pattern.indptr)))
            return
        for g in range(self.groups):
            part = weight if self.groups == 1 else weight.row_slice(g * per, (g + 1) * per)
            self._parts.append((part, self.bias[g * per:(g + 1) * per].copy(), RowChunks(part.indptr)))

    def __repr__(self) -> str:
        return (f"SparseConv2d({self.weight!r}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"activation={self.activation!r})")

    def describe_layout(self) -> str:
        """Which kernels run, e.g. ``"BSR 4x1, 4 channels x 4 rows of 16 per step"`` or ``"CSR"``."""
        if not self._block:
            return "CSR"
        r, rr, q, width = self._block
        return f"BSR {r}x1, {rr} channels x {q} rows of {width} per step"

    def step_widths(self) -> tuple[int, ...]:
        """The step widths this conv's CSR kernels can take on this host (none for block weights,
        whose width their geometry fixes)."""
        return () if self._block else step_widths()

    def step_width(self, height: int, width: int) -> int | None:
        """The step width for inputs of spatial size (height, width): the one set for that size
        (:meth:`set_step_width`, e.g. timed on this host), else the size rule's; None for
        block weights."""
        return self._step_width(height, width, *self.output_size(height, width))

    def _step_width(self, height: int, width: int, ho: int, wo: int) -> int | None:
        """:meth:`step_width` for an input whose (ho, wo) output the caller has."""
        if self._block:
            return None
        chosen = self._step_widths.get((height, width))
        if chosen is not None:
            return chosen
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            return pointwise_width(ho * wo, rule_widths())
        return pick_tile(wo, max(rule_widths()))

    def set_step_width(self, height: int, width: int, step: int | None) -> None:
        """Run inputs of spatial size (height, width) at step width ``step`` (one of
        :meth:`step_widths`), or by the size rule again (None)."""
        if step is None:
            self._step_widths.pop((height, width), None)
            return
        if step not in self.step_widths():
            raise KernelArgumentError(f"step width {step!r} should be one of {self.step_widths()}")
        self._step_widths[(height, width)] = int(step)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(Ho, Wo) for an input of spatial size (height, width)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        return ((height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The conv of ``x`` (N, C, H, W) -> (N, out_channels, Ho, Wo)."""
        return self._run(x, None, self._act)

    def with_residual(self, x: np.ndarray, residual: np.ndarray, activation: str | None = None) -> np.ndarray:
        """``activation(conv(x) + residual)`` in one pass: a residual Add (and the ReLU or ReLU6
        after it) applied to each block of outputs while it is in cache. ``residual`` has the
        output's shape and dtype; the sum is the one a separate Add would give, bit for bit.
        Only for a layer without an activation of its own (that would come before the Add)."""
        if self.activation is not None:
            raise KernelArgumentError(f"with_residual needs a conv without an activation of its own; this one "
                                      f"has {self.activation!r}, which would apply before the residual Add")
        act = activation_code(activation)
        if not isinstance(residual, np.ndarray) or residual.dtype != self.dtype:
            raise KernelArgumentError(f"residual should be a {self.dtype} array, got {residual!r:.60}")
        return self._run(x, residual, act)

    def _run(self, x: np.ndarray, residual: np.ndarray | None, act: int) -> np.ndarray:
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
        o = self.out_channels
        if residual is not None:
            if residual.shape != (n, o, ho, wo):
                raise KernelArgumentError(f"residual shape {residual.shape} should be the output's, {(n, o, ho, wo)}")
            residual = np.ascontiguousarray(residual).reshape(-1)
        # The slack lets a next 1x1 conv read its last partial step in place (_pointwise).
        y = empty_with_slack((n, o, ho, wo), self.dtype, POINTWISE_SLACK * self.dtype.itemsize)
        if n == 0 or o == 0:
            return y
        res = _no_residual(self.dtype) if residual is None else residual
        step = self._step_width(h, w, ho, wo)
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            self._pointwise(x, y, res, act, step)
            return y
        self._direct(np.ascontiguousarray(x), y, res, act, step)
        return y

    def _direct(self, x: np.ndarray, y: np.ndarray, res: np.ndarray, act: int, step: int | None) -> None:
        """The conv of contiguous ``x`` into ``y`` through the direct kernel (plus ``res``, the flat
        residual or an empty array, then ``act``; CSR steps ``step`` columns wide). A stride-s conv
        reads the input split into s*s phase planes (``plane[a*s+b][i, j] = xpad[s*i+a, s*j+b]``),
        in which every tap is a stride-1 shift: nothing is unfolded."""
        n, c, h, w = x.shape
        o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
        (kh, kw), (ph, pw), (dh, dw), (sh, sw) = self.kernel_size, self.padding, self.dilation, self.stride
        if self._block:
            r, rr, q, width = self._block
        else:
            q, width = _jit.SHIFTED_ROWS, step
        # Room for whole column steps and, below the image, whole row steps; in each plane.
        hq = max(-(-(h + 2 * ph) // sh), -(-ho // q) * q + (kh - 1) * dh // sh)
        wq = max(-(-(w + 2 * pw) // sw), -(-wo // width) * width + (kw - 1) * dw // sw)
        offsets = self._offsets(hq, wq)
        xpad = self._scratch.get((n, sh * sw, c, hq, wq), self.dtype)
        variant, n_chunks = launch(self.weight.nnz * n * ho * wo)
        if (sh, sw) == (1, 1):
            variant(_jit.pad_input)(x, ph, pw, xpad.reshape(n, c, hq, wq))
        else:
            variant(_jit.pad_phases)(x, ph, pw, sh, sw, xpad)
        if self._block:
            part, bias, chunks = self._parts[0]
            variant(_bsr_jit.block_direct_conv_kernel(r, rr, q, width))(
                self._values, offsets[0], part.indptr, xpad.reshape(-1), bias, act, y.reshape(-1), res, n,
                sh * sw * c * hq * wq, o * ho * wo, ho, wo, wq, chunks.bounds(n_chunks))
            return
        kernel = variant(_jit.direct_conv_kernel(width))
        per = o // self.groups
        for g, (part, bias, chunks) in enumerate(self._parts):
            kernel(part.data, offsets[g], part.indptr, xpad.reshape(-1), bias, act,
                   y.reshape(-1), res, g * per * ho * wo, n, sh * sw * c * hq * wq, o * ho * wo, ho, wo, wq,
                   chunks.bounds(n_chunks))

    def _pointwise(self, x: np.ndarray, y: np.ndarray, res: np.ndarray, act: int, step_width: int | None) -> None:
        """A 1x1 conv (any stride, no padding) of ``x`` into ``y`` (plus ``res``, then ``act``, CSR
        steps of SHIFTED_ROWS rows ``step_width`` wide, as in :meth:`_direct`) through the pointwise kernel:
        the input as it is (subsampled into scratch first when strided), positions in whole steps, the
        last partial step read on past its positions (see below)."""
        sh, sw = self.stride
        n, c = x.shape[:2]
        o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
        p = ho * wo
        if self._block:
            r, rr, q, width = self._block
        else:
            q, width = _jit.SHIFTED_ROWS, step_width
        step = q * width
        tail = p % step
        p_full = p - tail
        offsets = self._channel_offsets(p)
        variant, n_chunks = launch(self.weight.nnz * n * p)
        # The last partial step reads whole steps from its first position on, past each
        # channel into the next (lanes whose results are not stored) and past the input's
        # end into slack: the input's own when it has some, else a flat copy's.
        if (sh, sw) != (1, 1):  # subsampled into scratch with a step of slack after it
            size = n * c * p
            flat = self._scratch.get((size + step,), self.dtype)
            variant(_jit.subsample)(x, sh, sw, flat[:size].reshape(n, c, ho, wo))
            flat[size:] = 0
            x, xf = flat[:size], flat
        else:
            x = np.ascontiguousarray(x)
            xf = x.reshape(-1)
            if tail and readable_after(x) < (step - tail) * x.itemsize:
                copy = self._scratch.get((xf.shape[0] + step,), self.dtype)
                copy[:xf.shape[0]] = xf
                copy[xf.shape[0]:] = 0
                xf = copy
        tail_x = xf[p_full:]
        if self._block:
            part, bias, chunks = self._parts[0]
            variant(_bsr_jit.block_pointwise_conv_kernel(r, rr, q, width))(
                self._values, offsets[0], part.indptr, x.reshape(-1), c * p, p_full, tail_x, tail, bias, act,
                y.reshape(-1), res, n, o * p, p, chunks.bounds(n_chunks))
            return
        kernel = variant(_jit.pointwise_conv_kernel(width))
        per = o // self.groups
        for g, (part, bias, chunks) in enumerate(self._parts):
            kernel(part.data, offsets[g], part.indptr, x.reshape(-1), c * p, p_full, tail_x, tail, bias, act,
                   y.reshape(-1), res, g * per * p, n, o * p, p, chunks.bounds(n_chunks))

    def _channel_offsets(self, positions: int) -> list[np.ndarray]:
        """Per group, each nonzero's channel start (channel * ``positions``) for the pointwise kernel (cached)."""
        key = ("pointwise", positions)
        found = self._offset_cache.get(key)
        if found is None:
            cg = self.in_channels // self.groups
            found = [(g * cg + part.indices.astype(np.int64)) * positions for g, (part, _, _) in enumerate(self._parts)]
            self._offset_cache[key] = found
        return found

    def _offsets(self, hq: int, wq: int) -> list[np.ndarray]:
        """Per group, each nonzero's offset into one image's phase planes, (s*s, C, hq, wq) (cached)."""
        key = (hq, wq)
        found = self._offset_cache.get(key)
        if found is None:
            (kh, kw), (dh, dw), (sh, sw) = self.kernel_size, self.dilation, self.stride
            cg = self.in_channels // self.groups
            found = []
            for g, (part, _, _) in enumerate(self._parts):
                k = part.indices.astype(np.int64)
                chan = g * cg + k // (kh * kw)
                di, dj = ((k // kw) % kh) * dh, (k % kw) * dw  # the tap's shift in the padded input
                phase = (di % sh) * sw + dj % sw
                found.append(((phase * self.in_channels + chan) * hq + di // sh) * wq + dj // sw)
            self._offset_cache[key] = found
        return found


@functools.lru_cache(maxsize=None)
def _no_residual(dtype: np.dtype) -> np.ndarray:
    """An empty residual of ``dtype``: the kernels' "none" (one array type per dtype, one compile)."""
    return np.empty(0, dtype)


# Values a 1x1 conv may read past its input's end: its widest step (SHIFTED_ROWS rows of the
# widest tile; the block kernels' Q * width is no wider).
POINTWISE_SLACK = _jit.SHIFTED_ROWS * max(_jit.TILES)


def step_widths() -> tuple[int, ...]:
    """Step widths the direct and pointwise kernels may use on this host, for timing (see
    rule_widths): on AVX2 also 16, whose two sets of SHIFTED_ROWS accumulators
    overflow the 16 registers and spill, yet which some layers run faster (benchmarks/README.md,
    "Conv step widths timed at load")."""
    return _step_widths(isa.VARIANT)


def rule_widths() -> tuple[int, ...]:
    """The step widths the size rule picks from on this host (pointwise_width, pick_tile):
    those whose two sets of SHIFTED_ROWS accumulators fit in half the register file, which
    with AVX2's or SSE's 16 registers leaves width 8 only."""
    return _rule_widths(isa.VARIANT)


@functools.lru_cache(maxsize=None)
def _step_widths(variant: str) -> tuple[int, ...]:
    return _rule_widths(variant) + ((16,) if variant == "avx2" else ())


@functools.lru_cache(maxsize=None)
def _rule_widths(variant: str) -> tuple[int, ...]:
    return tuple(t for t in _jit.TILES if t <= (widest_tile(variant) if variant == "avx512" else 8))


def conv_block(blocksize: tuple[int, int], groups: int = 1) -> bool:
    """Whether a conv with weights in ``blocksize`` blocks runs the block kernels: R x 1 blocks,
    R in 2, 4, 8, 16, and ``groups`` 1 (anything else runs as a CSR)."""
    r, c = blocksize
    return c == 1 and r in _bsr_jit.SIDES[1:] and groups == 1


def block_geometry(r: int, variant: str) -> tuple[int, int, int, int]:
    """(r, channels per pass RR, shifted rows Q, width) of the block conv kernels for r x 1
    blocks: RR*Q accumulators of width/lanes registers each in half the register file
    (AVX-512: 4 x 4 of one zmm; AVX2: 4 x 2 of one ymm; SSE: 2 x 2 of two xmm)."""
    if variant == "avx512":
        return r, min(r, 4), 4, 16
    if variant == "avx2":
        return r, min(r, 4), 2, 8
    return r, min(r, 2), 2, 8


@functools.lru_cache(maxsize=256)
def pointwise_width(positions: int, widths: tuple[int, ...]) -> int:
    """The pointwise kernel's step width for ``positions`` outputs per image: the fewest
    computed positions (whole steps of SHIFTED_ROWS * width), weighed by a per-step cost
    that falls with the width (each nonzero's weight and offset are loaded once per step)."""
    def cost(w: int) -> float:
        step = _jit.SHIFTED_ROWS * w
        return -(-positions // step) * step * (1 + 4 / w)
    return min(widths, key=lambda w: (cost(w), -w))


def csr_conv2d(x: np.ndarray, w: CSR, bias=None, kernel_size=1, stride=1, padding=0, dilation=1,
               groups: int = 1, activation: str | None = None) -> np.ndarray:
    """NCHW conv with a CSR weight (out, in/groups*kh*kw); see SparseConv2d."""
    return SparseConv2d(w, bias, kernel_size, stride, padding, dilation, groups, activation)(x)
