"""The Numba kernel of the depthwise convolution's 3x3 case (``depthwise.py``); it trusts its
inputs. The code rules of ``_depthwise_jit.py`` hold here too."""

from __future__ import annotations

import numba
import numpy as np

from ._depthwise_jit import FASTMATH, VEC
from ._jit import serial


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _planes3x3(xf, w, bias, of, edge, stride, h, w_in, c_in, mult, ho, wo, ilo, ihi, lo, hi, first, end):
    """Input planes first .. end - 1 of :func:`depthwise3x3_kernel` (x and out flattened): one
    parallel task (see ``_depthwise_jit._planes``). The taps of a kernel row read one offset plus
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
def depthwise3x3_kernel(x, w, bias, stride, ilo, ihi, lo, hi, out, chunks):
    """``_depthwise_jit.depthwise_kernel`` for a 3x3 kernel with padding 1 on every side and stride 1 or 2
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
    for i in range(edge.shape[0]):  # (not np.full: see depthwise_kernel)
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



serial_depthwise3x3_kernel = serial(depthwise3x3_kernel)
