"""The one tolerance check: is an output within |a - e| <= atol + rtol * |e| of the expected one."""

from __future__ import annotations

import numpy as np


def compare(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    """(max abs err, max rel err, within |a−e| ≤ atol + rtol·|e| everywhere, shapes equal)."""
    if expected.shape != actual.shape:
        return float("inf"), float("inf"), False
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    if e.size == 0:
        return 0.0, 0.0, True
    diff = np.abs(a - e)
    finite = np.isfinite(a) == np.isfinite(e)
    diff = np.where(np.isnan(diff) & ~finite, np.inf, np.nan_to_num(diff, nan=0.0))
    rel = diff / np.maximum(np.abs(e), np.finfo(np.float32).tiny)
    ok = bool(np.all(diff <= atol + rtol * np.abs(e)) and np.all(finite))
    return float(diff.max()), float(rel.max()), ok
