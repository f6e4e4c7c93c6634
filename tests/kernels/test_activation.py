"""The kernels' activations: the rational erf behind float32 GELU, and the block epilogue."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch
from scipy.special import erf

from sparsify.kernels import CSR, _jit, csr_linear


@numba.njit(error_model="numpy")
def _erf_all(x, out):
    for i in range(x.shape[0]):
        out[i] = _jit.erf_rational(x[i])


@numba.njit(error_model="numpy")
def _gelu_all(a):
    _jit.activate_block(a, 0, a.shape[0], 2)


def _gelu64(v: np.ndarray) -> np.ndarray:
    return v * (0.5 + 0.5 * erf(v / math.sqrt(2.0)))


def test_rational_erf_is_within_2e_8_everywhere():
    x = np.concatenate([np.linspace(-7.0, 7.0, 1_400_001), [-4.0, 4.0, -1e300, 1e300, 0.0]])
    out = np.empty_like(x)
    _erf_all(x, out)
    assert np.abs(out - erf(x)).max() <= 2e-8
    # Exactly +-1 from the clamp on (so 1 + erf(x) is exactly 0 far left), odd symmetry.
    assert (out[np.abs(x) >= _jit.ERF_CLAMP] == np.sign(x[np.abs(x) >= _jit.ERF_CLAMP])).all()


def test_rational_erf_is_odd():
    x = np.linspace(0.0, 6.0, 60001)
    pos, neg = np.empty_like(x), np.empty_like(x)
    _erf_all(x, pos)
    _erf_all(-x, neg)
    assert np.array_equal(pos, -neg)


def test_float32_gelu_is_within_an_ulp_of_the_exact_one():
    v = np.concatenate([np.linspace(-12, 12, 480_001), np.geomspace(1e-30, 1e30, 2001),
                        -np.geomspace(1e-30, 1e30, 2001)]).astype(np.float32)
    got = v.copy()
    _gelu_all(got)
    exact = _gelu64(v.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    # An ulp of the result, or the fit's 1.6e-8 times |v|/2 where GELU nearly cancels.
    assert (np.abs(got - exact) <= ulp + 1e-8 * np.abs(v)).all()
    # Far left, GELU underflows to -0 rather than keeping v times the fit's error.
    assert got[v <= -6].max() == 0.0


def test_float32_gelu_special_values():
    v = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], np.float32)
    got = v.copy()
    _gelu_all(got)
    assert np.isnan(got[0]) and got[1] == np.inf and np.isnan(got[2])  # -inf * 0 is NaN
    assert got[3] == 0.0 and got[4] == 0.0 and got[5] == np.float32(1e30) and got[6] == 0.0
    assert np.signbit(got[4]) and np.signbit(got[6])  # -0.0 stays -0.0; -1e30 * 0 is -0.0


@pytest.mark.parametrize("batch", [1, 5, 40])
def test_gelu_layer_matches_torch_on_wide_outputs(rng, batch):
    # Pre-activations spread over [-30, 30]: the tails of erf, both signs, through the
    # SpMV (batch 1) and SpMM epilogues.
    w = rng.standard_normal((37, 50)).astype(np.float32) * 3
    w[rng.random(w.shape) < 0.5] = 0
    x = rng.standard_normal((batch, 50)).astype(np.float32) * 2
    y = csr_linear(x, CSR.from_dense(w), activation="gelu")
    pre = torch.from_numpy(x.astype(np.float64)) @ torch.from_numpy(w.astype(np.float64)).T
    ref = torch.nn.functional.gelu(pre).numpy()
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("batch", [1, 3, 40])
def test_relu6_clips_like_onnx_runtime(batch):
    # Identity weight: the outputs are the inputs, spread over [-12, 12] and the special
    # values, through the SpMV (batch 1, sliced ELL and CSR) and SpMM epilogues.
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 6.0, 6.5, -1e-30], np.float32)
    values = np.concatenate([np.linspace(-12, 12, 49, dtype=np.float32), special])
    x = np.stack([np.roll(values, i) for i in range(batch)])
    y = csr_linear(x, CSR.from_dense(np.eye(values.shape[0], dtype=np.float32)), activation="relu6")
    expect = np.where(np.isnan(x), np.nan, np.clip(x, 0, 6))
    np.testing.assert_array_equal(y, expect)  # NaN where NaN, else exactly the clip
