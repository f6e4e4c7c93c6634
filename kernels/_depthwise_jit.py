"""The Numba kernels of the depthwise convolution (``depthwise.py``) but its 3x3 one; they
trust their inputs.

:func:`depthwise_kernel` runs input channels in whole blocks of 16 (:func:`_blocks`) and the
channels past them plane by plane (:func:`_planes`), as parallel tasks.
"""

from __future__ import annotations

import numba
import numpy as np

from . import isa
from ._jit import serial
from ._simd import PIXEL_LANES, pixels_to_planes, planes_to_pixels, row_taps, strided_taps

# Kernel taps per pass over a run of the plane kernel: their weights and offsets stay in registers.
TAPS = 9
# Values per run of output rows the plane kernel computes before copying them out (16 KiB
# of float32: the run and the buffer rows it reads stay in L1).
BLOCK = 4096
# Values per vector at the widest (AVX-512 float32): runs are rounded up to whole vectors,
# so that no scalar remainder loop runs.
VEC = 16
# Channels per block of the blocked kernel: the lanes of a pixel vector.
LANES = PIXEL_LANES
# Output pixels of a row per ``row_taps`` call (a step), at stride 1 (and any other but 2)
# and at stride 2, then the narrower steps rows take where those compute fewer outputs past
# the row's end, by the target the kernels compile for: as many as keep a step's
# accumulators, kernel-row sums, window and a weight in the target's registers (AVX-512: 32,
# AVX2 and baseline x86-64: 16, holding a pixel vector in 2 or 4), and steps of 7 on AVX-512
# so that rows 7*2^k wide (ImageNet models' feature maps) compute nothing past their end
# (measured: benchmarks/README.md, "Depthwise convolutions").
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
    """Input planes first .. end - 1 of :func:`depthwise_kernel` (x and out flattened): one
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
    """Blocked items first .. end - 1 of :func:`depthwise_kernel` (x, the blocked weights, out and
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
def depthwise_kernel(x, w, bias, wb, pixels, taps, kh, kw, sh, sw, dh, dw, pt, pl, ilo, ihi, lo, hi, out, scratch,
                     values, pitch, whole, bands, chunks):
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


serial_depthwise_kernel = serial(depthwise_kernel)
