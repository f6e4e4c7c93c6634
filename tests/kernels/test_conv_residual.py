"""SparseConv2d.with_residual: the conv, a residual Add and the activation after it in one
pass, bit for bit what the conv followed by a separate Add (+ ReLU or ReLU6) gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSR, KernelArgumentError, SparseConv2d
from sparsify.kernels._jit import ACT_GELU, activate_block
from sparsify.kernels.bsr import BSR
from tests.kernels.conftest import random_sparse
from tests.kernels.test_conv_blocks import _block_weight


def separate(conv, x, residual, activation):
    """The conv, then the Add and the activation as numpy (the kernels' pass for GELU) compute them."""
    s = conv(x) + residual
    if activation == "relu":
        return np.maximum(s, s.dtype.type(0))
    if activation == "relu6":
        return np.clip(s, s.dtype.type(0), s.dtype.type(6))
    if activation == "gelu":  # the kernels' own GELU pass
        flat = s.reshape(-1)
        activate_block(flat, 0, flat.size, ACT_GELU)
    return s


def layer(rng, c, out, k, stride, padding, groups, block, dtype, density=0.3):
    kh, kw = (k, k) if isinstance(k, int) else k
    cols = c // groups * kh * kw
    b = rng.standard_normal(out).astype(dtype)
    if block:
        w = BSR.from_dense(_block_weight(rng, out, cols, block, density, dtype), (block, 1))
    else:
        w = CSR.from_dense(random_sparse(rng, (out, cols), density, dtype, empty_rows=True))
    return SparseConv2d(w, b, (kh, kw), stride, padding, 1, groups)


CASES = [  # (n, c, h, w, out, k, stride, padding, groups, block)
    (1, 16, 56, 56, 64, 1, 1, 0, 1, None),   # ResNet's bottleneck expansion: whole steps only
    (2, 8, 7, 9, 12, 1, 1, 0, 1, None),      # pointwise with a tail
    (1, 8, 14, 14, 16, 1, 2, 0, 1, None),    # strided pointwise (downsample)
    (2, 6, 9, 11, 8, 3, 1, 1, 1, None),      # direct, partial blocks at both edges
    (1, 6, 12, 20, 9, 3, 2, 1, 3, None),     # strided, grouped
    (1, 8, 17, 33, 16, 1, 1, 0, 1, 4),       # block pointwise with a tail
    (2, 8, 10, 13, 16, 3, 1, 1, 1, 8),       # block direct, partial blocks
]


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "gelu"])
@pytest.mark.parametrize("case", CASES)
def test_with_residual_equals_the_separate_add_bit_for_bit(rng, path, case, activation):
    n, c, h, w, out, k, stride, padding, groups, block = case
    dtype = np.float64 if activation == "relu6" else np.float32
    conv = layer(rng, c, out, k, stride, padding, groups, block, dtype)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    ho, wo = conv.output_size(h, w)
    residual = rng.standard_normal((n, out, ho, wo)).astype(dtype)
    got = conv.with_residual(x, residual, activation)
    want = separate(conv, x, residual, activation)
    assert got.shape == want.shape and got.dtype == dtype
    if activation == "gelu":  # the GELU pass vectorized over a block against the same pass over all: 1 ulp
        np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-7)
    else:
        np.testing.assert_array_equal(got, want)
    assert not np.shares_memory(got, residual)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 12), out=st.integers(1, 20), h=st.integers(1, 12), w=st.integers(1, 40),
       k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), density=st.sampled_from([0.0, 1e-3, 0.5, 1.0]),
       block=st.sampled_from([None, None, 2, 4]), seed=st.integers(0, 2**16))
def test_with_residual_property(c, out, h, w, k, stride, density, block, seed):
    rng = np.random.default_rng(seed)
    if block:
        out = -(-out // block) * block
    conv = layer(rng, c, out, k, stride, k // 2, 1, block, np.float32, density)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    ho, wo = conv.output_size(h, w)
    residual = rng.standard_normal((1, out, ho, wo)).astype(np.float32)[..., ::-1]  # non-contiguous
    np.testing.assert_array_equal(conv.with_residual(x, residual, "relu"), separate(conv, x, residual, "relu"))


def test_nan_and_inf_in_the_residual_come_through(rng):
    conv = layer(rng, 8, 16, 1, 1, 0, 1, None, np.float32)
    x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    residual = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    residual[0, 3, 2, 5], residual[0, 4, 7, 7], residual[0, 5, 0, 0] = np.nan, np.inf, -np.inf
    got = conv.with_residual(x, residual, "relu")
    np.testing.assert_array_equal(got, separate(conv, x, residual, "relu"))
    assert np.isnan(got[0, 3, 2, 5]) and got[0, 4, 7, 7] == np.inf and got[0, 5, 0, 0] == 0


def test_bad_residuals_and_layers_are_refused(rng):
    conv = layer(rng, 4, 6, 3, 1, 1, 1, None, np.float32)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    with pytest.raises(KernelArgumentError, match=r"residual shape \(1, 6, 5, 4\) should be the output's"):
        conv.with_residual(x, np.zeros((1, 6, 5, 4), np.float32))
    with pytest.raises(KernelArgumentError, match="residual should be a float32 array"):
        conv.with_residual(x, np.zeros((1, 6, 5, 5), np.float64))
    relu_conv = SparseConv2d(CSR.from_dense(np.ones((6, 36), np.float32)), None, 3, 1, 1, activation="relu")
    with pytest.raises(KernelArgumentError, match="before the residual Add"):
        relu_conv.with_residual(x, np.zeros((1, 6, 5, 5), np.float32))
