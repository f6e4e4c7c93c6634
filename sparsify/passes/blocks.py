"""Which block-sparse (BSR) layout a weight gets: its block shapes found from its zeros, the one to store.

A weight pruned in whole R x C blocks (``sparsify prune --block RxC``) is stored as a BSR
(``ai.sparsify`` ``blocksize`` attribute) so the block kernels (``sparsify.kernels.bsr``) run
it: one index per block instead of one per weight, each loaded input reused for R outputs
(convs: R x 1 blocks, run by the block conv kernels of ``sparsify.kernels.conv``).
The CSR pass asks :func:`block_candidates` which shapes fit a weight, then times them on the
host (``sparsify.runtime.calibrate``) or, with calibration off, takes :func:`fixed_rule_block`.
"""

from __future__ import annotations

import numpy as np

from sparsify.kernels.conv import conv_block

# Block shapes the BSR kernels run (sparsify.kernels.bsr.SIDES), largest first; R x 1 before
# 1 x C at equal size (each loaded input serves R outputs).
BLOCK_SHAPES = ((16, 1), (8, 2), (4, 4), (2, 8), (1, 16), (8, 1), (4, 2), (2, 4), (1, 8), (4, 1), (2, 2), (1, 4),
                (2, 1), (1, 2))
# Least share of a stored block's values that must be nonzero: below it the zeros stored
# inside blocks cost more multiply-adds than the block layout saves.
BLOCK_MIN_FILL = 0.75
# Denser weights are not looked at: unstructured ones that dense fill small blocks by chance
# (two-value blocks at density 0.7: 77% nonzero).
BLOCK_MAX_DENSITY = 0.5
# Candidates the calibration times per layer (each a few tens of milliseconds), largest first.
MAX_TIMED = 3


def block_candidates(w2d: np.ndarray) -> list[tuple[int, int]]:
    """The block shapes of BLOCK_SHAPES (in its order) that divide the weight's shape and whose
    blocks holding a nonzero are at least BLOCK_MIN_FILL nonzero, for weights of density at
    most BLOCK_MAX_DENSITY: a weight pruned in 4x1 blocks gets [(4, 1), (2, 1)]; an
    unstructured one, none."""
    nz = np.asarray(w2d) != 0
    if nz.ndim != 2:
        return []
    nnz = int(nz.sum())
    rows, cols = nz.shape
    if nnz == 0 or nnz > BLOCK_MAX_DENSITY * nz.size:
        return []
    # A shape's fill is at most that of every shape tiling its blocks (each nonempty block
    # covers at least one nonempty sub-block), so finer shapes go first and a failed one
    # rules out every shape it tiles: an unstructured weight is settled by 2x1 and 1x2.
    occupied = {(1, 1): nz}
    failed: list[tuple[int, int]] = []
    fits = set()
    for r, c in sorted(BLOCK_SHAPES, key=lambda b: (b[0] * b[1], b)):
        if rows % r or cols % c or any(r % fr == 0 and c % fc == 0 for fr, fc in failed):
            continue
        if nnz >= BLOCK_MIN_FILL * int(_occupied(occupied, r, c).sum()) * r * c:
            fits.add((r, c))
        else:
            failed.append((r, c))
    return [b for b in BLOCK_SHAPES if b in fits]


def _occupied(cache: dict[tuple[int, int], np.ndarray], r: int, c: int) -> np.ndarray:
    """Which r x c blocks hold a nonzero (r, c powers of two), from the halved shape's
    blocks in ``cache`` (pairs of rows, else of columns, OR-ed)."""
    if (r, c) not in cache:
        if r > 1:
            half = _occupied(cache, r // 2, c)
            cache[(r, c)] = half[0::2] | half[1::2]
        else:
            half = _occupied(cache, r, c // 2)
            cache[(r, c)] = half[:, 0::2] | half[:, 1::2]
    return cache[(r, c)]


def conv_block_candidates(w: np.ndarray, group: int) -> list[tuple[int, int]]:
    """The block shapes of a conv weight (O, C/g, kh, kw) the block conv kernels run (R x 1
    blocks of ``w.reshape(O, -1)``, ``group`` 1; ``sparsify.kernels.conv.conv_block``)."""
    return [b for b in block_candidates(np.asarray(w).reshape(w.shape[0], -1)) if conv_block(b, group)]


def fixed_rule_block(candidates: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The block shape stored when calibration is off: the largest candidate (the first).

    At 90% on 768x768 to 4096x4096 layers, batches 1, 8 and 128, 1 and 2 threads, block
    kernels against the unstructured CSR kernel at the same sparsity: 1x4 0.97-2.0x, 4x1
    1.2-3.6x, 16x1 1.5-4.5x, and 16x1 against 4x1 0.94-1.6x (Zen 4, AVX-512,
    benchmarks/results/blocks.json); AVX2 code: 4x1 1.3-3.4x, 16x1 1.4-5.1x, 1x4 0.92-3.3x
    but one noisy 0.54x point (blocks_avx2.json). Calibration re-decides per host."""
    return candidates[0] if candidates else None
