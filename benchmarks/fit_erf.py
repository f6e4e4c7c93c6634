"""Derive the rational erf approximation the kernels' GELU uses (``kernels/_jit.py``).

erf(x) ~ t * P(t^2) / Q(t^2), t = x / 4, on [0, 4] (float32 erf rounds to 1 beyond
4), P of degree 6 and Q of degree 5 with Q(0) = 1. The fit is linearised least squares
(x P - erf Q = 0) iterated with weights 1/|Q| (Loeb's method) and then pulled towards
equal ripple by weighting with the current error. Prints the coefficients and the
largest error of their float64 evaluation on a fine grid; the kernels' test
(tests/kernels/test_activation.py) checks the committed coefficients the same way.

    python benchmarks/fit_erf.py
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

CLAMP = 4.0
P_DEGREE, Q_DEGREE = 6, 5


def fit(p_degree: int = P_DEGREE, q_degree: int = Q_DEGREE, iterations: int = 40):
    """(P, Q) coefficient arrays, lowest degree first, for erf on [0, CLAMP]."""
    t = (np.cos(np.linspace(0.0, np.pi, 40001)) + 1.0) / 2.0  # Chebyshev-spaced on [0, 1]
    y = erf(t * CLAMP)
    z = t * t
    weight = np.ones_like(t)
    for step in range(iterations):
        columns = [t * z**k for k in range(p_degree + 1)] + [-y * z**k for k in range(1, q_degree + 1)]
        coef, *_ = np.linalg.lstsq(np.stack(columns, 1) * weight[:, None], y * weight, rcond=None)
        p, q = coef[:p_degree + 1], np.concatenate([[1.0], coef[p_degree + 1:]])
        q_val = np.polyval(q[::-1], z)
        err = np.abs(t * np.polyval(p[::-1], z) / q_val - y)
        weight = 1.0 / np.abs(q_val)
        if step > 3:
            weight *= (err / err.max() + 1e-3) ** 0.7
    return p, q


def max_error(p, q) -> float:
    """Largest |approximation - erf| over [-6, 6] (float64 evaluation, clamped at CLAMP)."""
    x = np.linspace(-6.0, 6.0, 4_000_001)
    t = np.clip(x / CLAMP, -1.0, 1.0)
    z = t * t
    approx = np.where(np.abs(x) >= CLAMP, np.sign(x), t * np.polyval(p[::-1], z) / np.polyval(q[::-1], z))
    return float(np.abs(approx - erf(x)).max())


def main() -> int:
    p, q = fit()
    print("ERF_P =", tuple(float(f"{c:.17g}") for c in p))
    print("ERF_Q =", tuple(float(f"{c:.17g}") for c in q))
    print(f"max abs error on [-6, 6]: {max_error(p, q):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
