"""Depthwise 2-D convolution of NCHW arrays (the runtime's depthwise Conv glue), clips fused.

Each input channel is convolved with its own M kernels (depth multiplier M), giving output
channels c*M .. c*M + M - 1, as ONNX ``Conv`` with ``group`` equal to the input channels.
A clip of the input (a Clip before the Conv) and of the output (a Clip or Relu after it)
can be applied in the same pass.

Three kernels, chosen by structure:

- A 3x3 kernel with padding 1 and stride 1, or stride 2 with output rows of at least 16
  (MobileNet's depthwise convolutions but the smallest), has its own kernel, which copies
  one input plane at a time into a zero-padded buffer and computes a whole output plane as
  one run of vectors along the plane.
- Every other conv runs its input channels in blocks of 16 (``_simd.PIXEL_LANES``): a
  block's input is transposed into a buffer of pixel vectors (one value per channel, one
  cache line in float32) between the left and right padding's zeros, each kernel tap is
  then one aligned vector load times a vector of the 16 channels' weights (kernel rows on
  the top or bottom padding are skipped), a row's output pixels are accumulated in
  registers (``_simd.row_taps``) and transposed back to the NCHW planes.
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

from . import isa
from ._jit import serial
from ._simd import PIXEL_LANES, pixels_to_planes, planes_to_pixels, row_taps, strided_taps
from .buffers import Scratch, empty_with_slack
from .conv import POINTWISE_SLACK
from .errors import KernelArgumentError

# Below this much work (multiply-adds plus input values copied) a call runs on one thread:
# measured here (3x3, stride 1, 2 threads, Numba's tbb layer), one thread took 6.2 us for
# 1.3e5 against 8.0 us on two, and both ~10.5 us for 2.5e5. (The smallest MobileNetV2
# depthwise layer, 960 x 7 x 7, has 4.7e5.)
SERIAL_WORK = 1 << 18
# Kernel taps per pass over a run of the plane kernel: their weights and offsets stay in registers.
TAPS = 9
# Values per run of output rows the plane kernel computes before copying them out (16 KiB
# of float32: the run and the buffer rows it reads stay in L1).
BLOCK = 4096
# Parallel chunks per thread: more than one lets a thread that other work delays fall behind
# without holding up the others.
CHUNKS_PER_THREAD = 2
# The same for the blocked kernel, whose tasks are bands of equal work: Numba's tbb layer gave
# each thread a fixed share of the chunks anyway, and a second chunk per thread only split
# the blocks into more bands (their overlapping input rows transposed twice): one measured
# 0-9% faster (2 threads, bench_depthwise.py's 5x5 and 7x7 shapes, against ONNX Runtime).
BLOCK_CHUNKS_PER_THREAD = 1
# Values per vector at the widest (AVX-512 float32): runs are rounded up to whole vectors,
# so that no scalar remainder loop runs.
VEC = 16
# Channels per block of the blocked kernel: the lanes of a pixel vector.
LANES = PIXEL_LANES
# Output pixels of a row per ``row_taps`` call (a step), at stride 1 (and any other but 2)
# and at stride 2, then the narrower steps rows take where those compute fewer outputs past
# the row's end, by the target the kernels compile for. AVX-512: a step's accumulators,
# kernel-row sums and window (8 + 8 + 7 vectors at stride 1, 8 + 8 + 14 at stride 2) and a
# weight fit its 32 registers; steps of 7 leave rows 7*2^k wide (ImageNet models' feature
# maps) nothing to compute past their end (4-13% faster on the rows of 7, 14 and 28 of
# benchmarks/bench_depthwise.py). AVX2 and baseline x86-64 hold a pixel vector in 2 or 4 of
# their 16 registers: steps of 8 spilled there (4x slower than the plane kernel); AVX2 ran
# fastest with 4 at stride 1 and 2 at stride 2, baseline x86-64 with 2 at both (on
# bench_depthwise.py's 5x5 and 7x7 shapes, compiled for znver2 and x86-64 on the Zen 4).
(PIXELS, NARROW), (PIXELS2, NARROW2) = {"avx512": ((8, 7), (8, 7)), "avx2": ((4, 4), (2, 2))}.get(
    isa.target_variant(), ((2, 2), (2, 2)))
# Output positions the blocked kernel computes before transposing them out: their pixel
# vectors (8 KiB of float32) stay in L1.
SEGMENT = 128
FASTMATH = {"contract"}
# Code rules for the loops below, each measured:
# - Offsets are np.uintp: a signed index costs a negative-index wraparound test, which
#   stops vectorizing; and an int64 constant in uintp arithmetic makes it float64.
# - No helper functions taking arrays, and no slices, inside the loops over planes: each
#   costs atomic reference-count updates per call.
# - Clips are written ``v = lo if lo > v else v`` (maxps / minps): v < lo gives lo, then
#   v > hi gives hi, and a NaN stays NaN, as ONNX Runtime's Clip.


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _planes(xf, w, bias, of, toff, kh, kw, sh, sw, h, w_in, c_in, mult, ho, wo, hq, wq, pt, pl, ilo, ihi, lo, hi,
            first, end):
    """Input planes first .. end - 1 of :func:`_depthwise` (x and out flattened): one
    parallel task, a function of its own because inside the parallel loop's body the same
    code ran slower (~35 ns a plane for the 3x3 kernel)."""
    taps = kh * kw
    groups = (taps + TAPS - 1) // TAPS
    rows = max(1, min(ho, BLOCK // wq))
    run = (rows * wq + VEC - 1) // VEC * VEC
    # After the sub-planes: the slack a run rounded up to whole vectors reads past them, then
    # zeros for the taps past kh*kw to read (a pass has TAPS; 0 * inf would be NaN).
    zeros = sh * sw * hq * wq + wq + VEC
    buf = np.zeros(zeros + run, xf.dtype)
    tmp = np.empty(run, xf.dtype)
    wl = np.zeros(groups * TAPS, xf.dtype)
    at_tap = np.empty(TAPS, np.int64)
    two = np.uintp(2)
    c = first % c_in
    for p in range(first, end):
        # The polyphase copy: padded row iy + pt = j*sh + qy and padded column ix + pl =
        # i*sw + qx go to buf[((qy*sw + qx)*hq + j)*wq + i]; the padding keeps its zeros.
        at = p * h * w_in
        for qy in range(sh):
            j0 = max(0, (pt - qy + sh - 1) // sh)  # rows j whose input row lies in [0, h)
            j1 = min(hq, (h - 1 + pt - qy) // sh + 1)
            for qx in range(sw):
                i0 = max(0, (pl - qx + sw - 1) // sw)  # columns i whose input column lies in [0, w)
                ix0 = i0 * sw + qx - pl
                n = np.uintp(max(0, min(wq - i0, (w_in - ix0 + sw - 1) // sw)))
                step = np.uintp(sw)
                for j in range(j0, j1):
                    src = np.uintp(at + (j * sh + qy - pt) * w_in + ix0)
                    dst = np.uintp(((qy * sw + qx) * hq + j) * wq + i0)
                    if sw == 1:
                        for i in range(n):
                            v = xf[src + i]
                            v = ilo if ilo > v else v
                            v = ihi if ihi < v else v
                            buf[dst + i] = v
                    elif sw == 2:  # (LLVM vectorizes a constant stride, not a run-time one)
                        for i in range(n):
                            v = xf[src + i * two]
                            v = ilo if ilo > v else v
                            v = ihi if ihi < v else v
                            buf[dst + i] = v
                    else:
                        for i in range(n):
                            v = xf[src + i * step]
                            v = ilo if ilo > v else v
                            v = ihi if ihi < v else v
                            buf[dst + i] = v
        for m in range(mult):
            oc = c * mult + m
            for t in range(taps):
                wl[t] = w[oc, t]
            b = bias[oc]
            plane = (p * mult + m) * ho * wo  # output plane (n, oc) of input plane p = (n, c)
            for oy0 in range(0, ho, rows):
                # Output rows oy0 .. oy0 + r - 1: one run over r*wq buffer positions, of which
                # each row's last wq - wo are discarded.
                r = min(rows, ho - oy0)
                n = np.uintp((r * wq + VEC - 1) // VEC * VEC)
                for g in range(groups):
                    k = g * TAPS
                    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wl[k], wl[k + 1], wl[k + 2], wl[k + 3], wl[k + 4],
                                                          wl[k + 5], wl[k + 6], wl[k + 7], wl[k + 8])
                    for t in range(TAPS):
                        at_tap[t] = oy0 * wq + toff[k + t] if k + t < taps else zeros
                    o0, o1, o2 = np.uintp(at_tap[0]), np.uintp(at_tap[1]), np.uintp(at_tap[2])
                    o3, o4, o5 = np.uintp(at_tap[3]), np.uintp(at_tap[4]), np.uintp(at_tap[5])
                    o6, o7, o8 = np.uintp(at_tap[6]), np.uintp(at_tap[7]), np.uintp(at_tap[8])
                    # Three partial sums: a chain of three multiply-adds per vector, not nine.
                    if g == 0:
                        for i in range(n):
                            tmp[i] = ((b + w0 * buf[o0 + i] + w1 * buf[o1 + i] + w2 * buf[o2 + i])
                                      + (w3 * buf[o3 + i] + w4 * buf[o4 + i] + w5 * buf[o5 + i])
                                      + (w6 * buf[o6 + i] + w7 * buf[o7 + i] + w8 * buf[o8 + i]))
                    else:
                        for i in range(n):
                            tmp[i] = ((tmp[i] + w0 * buf[o0 + i] + w1 * buf[o1 + i] + w2 * buf[o2 + i])
                                      + (w3 * buf[o3 + i] + w4 * buf[o4 + i] + w5 * buf[o5 + i])
                                      + (w6 * buf[o6 + i] + w7 * buf[o7 + i] + w8 * buf[o8 + i]))
                for q in range(r):
                    src, dst = np.uintp(q * wq), np.uintp(plane + (oy0 + q) * wo)
                    for ox in range(np.uintp(wo)):
                        v = tmp[src + ox]
                        v = lo if lo > v else v
                        v = hi if hi < v else v
                        of[dst + ox] = v
        c = c + 1 if c + 1 < c_in else 0  # (no division per plane)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _blocks(xf, wf, of, scratch, at, pixels, taps, c_in, mult, h, w_in, ho, wo, pitch, kh, kw, sh, sw, dh, dw, pt, pl,
            ilo, ihi, lo, hi, whole, bands, first, end):
    """Blocked items first .. end - 1 of :func:`_depthwise` (x, the blocked weights, out and
    scratch flattened): one parallel task, its buffers in ``scratch`` from ``at`` on.

    Item (n, block, band), block < ``whole``, computes output rows band*Ho // bands .. (band + 1)*Ho // bands - 1
    of the block's 16 channels of image n. The buffer holds the input rows, each ``pitch``
    pixel vectors with the left and right padding's zeros (then one vector where input the
    conv never reads is thrown); kernel rows that fall on the top or bottom padding are left
    out of the sums, not multiplied by zeros. Input rows are transposed in as the output rows
    come to need them, and the output positions, SEGMENT or so at a time, are computed into
    pixel vectors after the buffer and transposed out.
    """
    if first >= end:
        return
    hw, howo, vec = h * w_in, ho * wo, LANES
    wrow = (1 + kh * kw) * vec
    ob = at + (h * pitch + 1) * vec
    for r in range(h):  # the padding's zeros (the input's pixels are written for each block)
        row = at + r * pitch * vec
        for i in range(min(pl, pitch) * vec):
            scratch[row + i] = 0
        for i in range(min(pl + w_in, pitch) * vec, pitch * vec):
            scratch[row + i] = 0
    clip_in = ilo > -np.inf or ihi < np.inf
    wide, thin = (PIXELS2, NARROW2) if dw == 1 and sw == 2 else (PIXELS, NARROW)
    narrow = (max(wo, thin) + thin - 1) // thin * thin < (max(wo, wide) + wide - 1) // wide * wide
    step = thin if narrow else wide
    per_row = (wo + step - 1) // step
    seg_rows = max(1, SEGMENT // wo)
    row_step, ostride = dh * pitch * vec, mult * howo
    for item in range(first, end):
        n = item // (whole * bands)
        cb = item // bands - n * whole
        band = item - item // bands * bands
        src = (n * c_in + cb * vec) * hw
        oy0, oy1 = band * ho // bands, (band + 1) * ho // bands
        ready = max(0, oy0 * sh - pt) * w_in  # input positions transposed in so far
        last = min(h, (oy1 - 1) * sh + (kh - 1) * dh - pt + 1) * w_in
        if hw < vec:  # a plane smaller than a transpose: value by value
            for q in range(ready, last):
                d = at + pixels[q] * vec
                for i in range(vec):
                    v = xf[src + i * hw + q]
                    v = ilo if ilo > v else v
                    scratch[d + i] = ihi if ihi < v else v
            ready = last
        for m in range(mult):
            b_at = (cb * mult + m) * wrow
            dst = ((n * c_in + cb * vec) * mult + m) * howo
            oy = oy0
            while oy < oy1:
                oe = min(oy1, oy + seg_rows)
                if (oy1 - oe) * wo < vec:  # too few positions left for a transpose: this segment takes them
                    oe = oy1
                s = oy * wo
                for y in range(oy, oe):
                    need = min(last, min(h, y * sh + (kh - 1) * dh - pt + 1) * w_in)
                    while ready < need:  # the last transpose of a plane overlaps the one before
                        q = min(ready, hw - vec)
                        if clip_in:
                            planes_to_pixels(xf, src + q, hw, scratch, at, pixels, q, ilo, ihi, 1)
                        else:
                            planes_to_pixels(xf, src + q, hw, scratch, at, pixels, q, ilo, ihi, 0)
                        ready += vec
                    # Kernel rows ky0 .. ky1 - 1 read input rows (none: the sums are the bias).
                    if dh == 1:  # (no division for the usual dilation: on 7x7 planes 2-5% of the time)
                        ky0 = max(0, pt - y * sh)
                        ky1 = max(ky0, min(kh, pt + h - y * sh))
                    else:
                        ky0 = max(0, (pt - y * sh + dh - 1) // dh)
                        ky1 = max(ky0, min(kh, (pt + h - 1 - y * sh) // dh + 1))
                    rows, row0 = ky1 - ky0, at + (y * sh - pt) * pitch * vec  # kernel row 0's input row
                    w_at = b_at + vec + ky0 * kw * vec
                    for k in range(per_row):
                        # A row narrower than a step computes past its end into the next row's
                        # outputs (computed after it) or the slack; a last partial step overlaps
                        # the one before.
                        ox = min(k * step, max(0, wo - step))
                        base, o = row0 + ox * sw * vec, ob + (y * wo + ox - s) * vec
                        top = base + ky0 * row_step
                        if dw == 1 and sw == 1:
                            if narrow:
                                row_taps(scratch, top, row_step, rows, kw, wf, b_at, w_at, scratch, o, lo, hi,
                                         NARROW, 1)
                            else:
                                row_taps(scratch, top, row_step, rows, kw, wf, b_at, w_at, scratch, o, lo, hi,
                                         PIXELS, 1)
                        elif dw == 1 and sw == 2:
                            if narrow:
                                row_taps(scratch, top, row_step, rows, kw, wf, b_at, w_at, scratch, o, lo, hi,
                                         NARROW2, 2)
                            else:
                                row_taps(scratch, top, row_step, rows, kw, wf, b_at, w_at, scratch, o, lo, hi,
                                         PIXELS2, 2)
                        elif narrow:
                            strided_taps(scratch, base, sw * vec, taps, ky0 * kw, ky1 * kw, kw, wf, b_at, b_at + vec,
                                         scratch, o, lo, hi, NARROW)
                        else:
                            strided_taps(scratch, base, sw * vec, taps, ky0 * kw, ky1 * kw, kw, wf, b_at, b_at + vec,
                                         scratch, o, lo, hi, PIXELS)
                e = oe * wo
                if e - s >= vec:
                    for q0 in range(s, e, vec):
                        q = min(q0, e - vec)
                        pixels_to_planes(scratch, ob + (q - s) * vec, of, dst + q, ostride)
                else:
                    for q in range(s, e):
                        for i in range(vec):
                            of[dst + i * ostride + q] = scratch[ob + (q - s) * vec + i]
                oy = oe


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _depthwise(x, w, bias, wb, pixels, taps, kh, kw, sh, sw, dh, dw, pt, pl, ilo, ihi, lo, hi, out, scratch, values,
               pitch, whole, bands, chunks):
    """out[n, c*M + m] = clip(bias + conv of clip(x[n, c], ilo, ihi) with kernel w[c*M + m]
    (flattened kh*kw), lo, hi) for the zero padding (pt, pl) at the top and left; out's shape
    gives the output size and so the bottom and right padding. ``chunks`` parallel tasks
    share the work: the first ``whole`` blocks of 16 channels each in ``bands`` bands of
    output rows (:func:`_blocks`), the channels past them plane by plane (:func:`_planes`).

    Blocked layout: ``wb[b*M + m]`` holds the bias, then the kh*kw taps' weights, of output
    channels (16b + l)*M + m, l < 16, lane by lane; ``pixels[y*W + x]`` is the buffer pixel
    of input position (y, x), ``y*pitch + x + pl``, or H*pitch for the columns past the
    ``pitch`` >= (max(Wo, step) - 1)*sw + (kw - 1)*dw + 1 the conv reads; ``taps[ky*kw +
    kx]`` is tap (ky, kx)'s offset in values, (ky*dh*pitch + kx*dw)*16 (both only needed when
    ``whole`` > 0). Task ch has ``values`` values of ``scratch`` from ch*values on (a multiple of
    16, aligned to 64 bytes): H rows of ``pitch`` pixel vectors, one more vector, then
    max(SEGMENT, Wo) + 16 + step output pixel vectors (step: the widest row step).

    Plane layout: sub-plane (qy, qx) holds padded rows qy, qy + sh, ... and columns
    qx, qx + sw, ... (hq rows of wq); tap (ky, kx) reads sub-plane (ky*dh % sh, kx*dw % sw)
    from row ky*dh // sh and column kx*dw // sw on, the output position's own row and column.
    """
    n_img, c_in, h, w_in = x.shape
    ho, wo = out.shape[2], out.shape[3]
    mult = out.shape[1] // c_in
    left = c_in - whole * LANES
    hq = ho + (kh - 1) * dh // sh
    wq = wo + (kw - 1) * dw // sw
    # (np.empty and a loop: in a parallel kernel np.zeros is a parallel loop of its own, a
    # launch of the thread pool.)
    toff = np.empty((kh * kw + TAPS - 1) // TAPS * TAPS, np.int64)
    for t in range(toff.shape[0]):
        oy, ox = (t // kw) * dh, (t % kw) * dw
        toff[t] = (((oy % sh) * sw + ox % sw) * hq + oy // sh) * wq + ox // sw if t < kh * kw else 0
    xf, of = x.reshape(x.size), out.reshape(out.size)
    wf = wb.reshape(wb.size)
    items, planes = n_img * whole * bands, n_img * left
    for ch in numba.prange(chunks):
        _blocks(xf, wf, of, scratch, ch * values, pixels, taps, c_in, mult, h, w_in, ho, wo, pitch, kh, kw, sh, sw,
                dh, dw, pt, pl, ilo, ihi, lo, hi, whole, bands, ch * items // chunks, (ch + 1) * items // chunks)
        r, r_end = ch * planes // chunks, (ch + 1) * planes // chunks
        while r < r_end:  # the channels past the last block, image by image
            n = r // left
            stop = min(r_end, (n + 1) * left)
            first = n * c_in + whole * LANES - n * left
            _planes(xf, w, bias, of, toff, kh, kw, sh, sw, h, w_in, c_in, mult, ho, wo, hq, wq, pt, pl, ilo, ihi, lo,
                    hi, first + r, first + stop)
            r = stop


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _planes3x3(xf, w, bias, of, edge, stride, h, w_in, c_in, mult, ho, wo, ilo, ihi, lo, hi, first, end):
    """Input planes first .. end - 1 of :func:`_depthwise3x3` (x and out flattened): one
    parallel task (see :func:`_planes`). The taps of a kernel row read one offset plus
    constants: LLVM then checks fewer pointer pairs for overlap before each vectorized run."""
    hw = ho * wo
    run = (hw + VEC - 1) // VEC * VEC
    main = hw // VEC * VEC
    sub = (h + 2) * wo if stride == 1 else (ho + 1) * wo
    # A guard value in front (the left taps of output 0 read one before its row) and a
    # vector of slack behind.
    buf = np.zeros(1 + (1 if stride == 1 else 4) * sub + VEC, xf.dtype)
    # Where kernel row ky's taps read for output position 0: stride 1, kx = 0, 1, 2 at
    # r_ky + kx; stride 2, kx = 0, 2 at r_ky + 0, 1 in the odd-column sub-plane and kx = 1
    # at e_ky in the even-column one. (Padded row 2*oy + ky is input row 2*oy + ky - 1: odd
    # row oy - 1, even row oy, odd row oy for ky = 0, 1, 2; columns alike.)
    if stride == 1:
        r0, r1, r2 = 0, wo, 2 * wo
        e0 = e1 = e2 = 0
    else:
        r0, e0 = 1 + 3 * sub - 1, 1 + 2 * sub
        r1, e1 = 1 + sub + wo - 1, 1 + wo
        r2, e2 = 1 + 3 * sub + wo - 1, 1 + 2 * sub + wo
    one, two = np.uintp(1), np.uintp(2)
    zero = xf.dtype.type(0)
    c = first % c_in
    for p in range(first, end):
        at = np.uintp(p * h * w_in)
        if stride == 1:
            dst = np.uintp(1 + wo)
            for i in range(np.uintp(h * w_in)):
                v = xf[at + i]
                v = ilo if ilo > v else v
                v = ihi if ihi < v else v
                buf[dst + i] = v
        else:
            # Two input rows (one of each parity) per loop: half the loops over short rows.
            half, row = np.uintp(w_in // 2), np.uintp(w_in)
            for r in range(h // 2):
                src = at + np.uintp(2 * r * w_in)
                even = np.uintp(1 + wo + r * wo)  # even row r of sub-plane (0, 0)
                odd, even1, odd1 = even + np.uintp(sub), even + np.uintp(2 * sub), even + np.uintp(3 * sub)
                for k in range(half):
                    v0, v1 = xf[src + two * k], xf[src + two * k + one]
                    v2, v3 = xf[src + row + two * k], xf[src + row + two * k + one]
                    v0, v1 = (ilo if ilo > v0 else v0), (ilo if ilo > v1 else v1)
                    v2, v3 = (ilo if ilo > v2 else v2), (ilo if ilo > v3 else v3)
                    buf[even + k] = ihi if ihi < v0 else v0
                    buf[odd + k] = ihi if ihi < v1 else v1
                    buf[even1 + k] = ihi if ihi < v2 else v2
                    buf[odd1 + k] = ihi if ihi < v3 else v3
                if w_in % 2:
                    v0, v2 = xf[src + two * half], xf[src + row + two * half]
                    v0, v2 = (ilo if ilo > v0 else v0), (ilo if ilo > v2 else v2)
                    buf[even + half] = ihi if ihi < v0 else v0
                    buf[even1 + half] = ihi if ihi < v2 else v2
            if h % 2:  # the last row, even
                src = at + np.uintp((h - 1) * w_in)
                even = np.uintp(1 + wo + (h // 2) * wo)
                odd = even + np.uintp(sub)
                for k in range(half + np.uintp(w_in % 2)):
                    v = xf[src + two * k]
                    v = ilo if ilo > v else v
                    buf[even + k] = ihi if ihi < v else v
                for k in range(half):
                    v = xf[src + two * k + one]
                    v = ilo if ilo > v else v
                    buf[odd + k] = ihi if ihi < v else v
        for m in range(mult):
            oc = c * mult + m
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = (w[oc, 0], w[oc, 1], w[oc, 2], w[oc, 3], w[oc, 4], w[oc, 5],
                                                  w[oc, 6], w[oc, 7], w[oc, 8])
            b = bias[oc]
            plane = (p * mult + m) * hw  # output plane (n, oc) of input plane p = (n, c)
            # The plane as one run of whole vectors: rounded up, it spills into the output
            # planes this task computes next; where too few follow, a run of the whole vectors
            # that fit, then the last vector, overlapping it.
            spill = run - hw <= ((end - 1 - p) * mult + mult - 1 - m) * hw
            for seg in range(2):
                if seg == 0:
                    start, count = 0, run if spill else (main if main else hw)
                elif not spill and 0 < main < hw:
                    start, count = hw - VEC, VEC
                else:
                    break
                d, s, n = np.uintp(plane + start), np.uintp(start), np.uintp(count)
                a0, a1, a2 = np.uintp(r0 + start), np.uintp(r1 + start), np.uintp(r2 + start)
                if stride == 1:
                    for i in range(n):
                        # Selects, not products with a 0/1 mask: the value masked off may be inf or NaN.
                        flags = edge[s + i]
                        side = w0 * buf[a0 + i] + w3 * buf[a1 + i] + w6 * buf[a2 + i] if flags & 1 else zero
                        other = (w2 * buf[a0 + i + two] + w5 * buf[a1 + i + two] + w8 * buf[a2 + i + two]
                                 if flags & 2 else zero)
                        v = (b + w1 * buf[a0 + i + one] + w4 * buf[a1 + i + one] + w7 * buf[a2 + i + one]
                             + (side + other))
                        v = lo if lo > v else v  # (v < lo gives lo, v > hi gives hi: a NaN stays NaN)
                        v = hi if hi < v else v
                        of[d + i] = v
                else:
                    f0, f1, f2 = np.uintp(e0 + start), np.uintp(e1 + start), np.uintp(e2 + start)
                    for i in range(n):
                        side = w0 * buf[a0 + i] + w3 * buf[a1 + i] + w6 * buf[a2 + i] if edge[s + i] & 1 else zero
                        v = (b + w1 * buf[f0 + i] + w4 * buf[f1 + i] + w7 * buf[f2 + i]
                             + (w2 * buf[a0 + i + one] + w5 * buf[a1 + i + one] + w8 * buf[a2 + i + one] + side))
                        v = lo if lo > v else v
                        v = hi if hi < v else v
                        of[d + i] = v
        c = c + 1 if c + 1 < c_in else 0  # (no division per plane)


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _depthwise3x3(x, w, bias, stride, ilo, ihi, lo, hi, out, chunks):
    """:func:`_depthwise` for a 3x3 kernel with padding 1 on every side and stride 1 or 2
    (both axes): each output plane is one run, with no discarded columns.

    Stride 1 reads the plane with a zero row above and below, rows ``wo`` (= w) apart;
    stride 2 reads its four parity sub-planes (even/odd rows x even/odd columns), each with
    a zero row above, rows ``wo`` apart. Either way every tap reads at a fixed offset from
    the output position; at the plane's edge columns the taps of the left (stride 1: and
    right) kernel column read a neighbouring row instead of the padding, so ``edge`` (bit 1:
    left taps count, bit 2: right taps count) masks them off there. Stride 2's right
    column reads odd input column ox, padding only past an odd width's end, where the
    buffer holds the 0 it was cleared to.
    """
    n_img, c_in, h, w_in = x.shape
    ho, wo = out.shape[2], out.shape[3]
    hw = ho * wo
    edge = np.empty((hw + VEC - 1) // VEC * VEC, np.uint8)  # read as far as a rounded run
    for i in range(edge.shape[0]):  # (not np.full: see _depthwise)
        edge[i] = 3
    for oy in range(ho):
        edge[oy * wo] &= 2
        if stride == 1:
            edge[oy * wo + wo - 1] &= 1
    xf, of = x.reshape(x.size), out.reshape(out.size)
    planes = n_img * c_in
    per = (planes + chunks - 1) // chunks
    for ch in numba.prange(chunks):
        _planes3x3(xf, w, bias, of, edge, stride, h, w_in, c_in, out.shape[1] // c_in, ho, wo, ilo, ihi, lo, hi,
                   ch * per, min(planes, (ch + 1) * per))


_serial_depthwise = serial(_depthwise)
_serial_depthwise3x3 = serial(_depthwise3x3)
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
    # table and tap table (``_depthwise``).
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
            kernel = _depthwise3x3 if parallel else _serial_depthwise3x3
            kernel(x, self._w, self._b, self.stride[0], *self._clips, out, chunks)
            return out
        whole, bands, chunks = c // LANES if values else 0, 1, 1
        if parallel:
            # Whole blocks split into bands of output rows so that every task gets as many.
            planes = c - whole * LANES
            chunks = min(n * (whole * shape[2] + planes), BLOCK_CHUNKS_PER_THREAD * numba.get_num_threads())
            if whole:
                bands = min(shape[2], chunks // math.gcd(n * whole, chunks))
        kernel = _depthwise if parallel else _serial_depthwise
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_shape, self.stride, self.dilation
        kernel(x, self._w, self._b, self._blocked_weights(c, whole), pixels, taps, kh, kw, sh, sw, dh, dw,
               self.padding[0], self.padding[1], *self._clips, out, _SCRATCH.get((chunks * values,), self.dtype),
               values, pitch, whole, bands, chunks)
        return out

    def _blocked_weights(self, c: int, whole: int) -> np.ndarray:
        """The blocked kernel's weights for ``c`` input channels of which the first ``whole``
        blocks run blocked (``_depthwise``'s ``wb``): per block b and multiplier index m, the
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
