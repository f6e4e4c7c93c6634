"""Helpers shared by the whole test suite."""

from __future__ import annotations

import numpy as np

# Per-dtype tolerances for comparing a candidate against a reference.
TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-9),
    np.dtype(np.float32): (1e-5, 1e-4),
}


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def assert_close(actual, expected, atol: float | None = None, rtol: float | None = None) -> None:
    """Shape, then dtype, then values; the failure names the largest abs and rel error."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"shape {a.shape} should be {e.shape}"
    assert a.dtype == e.dtype, f"dtype {a.dtype} should be {e.dtype}"
    d_atol, d_rtol = TOLERANCES.get(e.dtype, (0.0, 0.0))
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    if a.size == 0:
        return
    diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
    rel = diff / np.maximum(np.abs(e.astype(np.float64)), 1e-30)
    np.testing.assert_allclose(
        a, e, atol=atol, rtol=rtol,
        err_msg=f"max abs err {diff.max():.3e}, max rel err {rel.max():.3e}",
    )
