"""SparseConv2d over R x 1 block weights (BSR) against torch's conv2d in float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsify.kernels import SparseConv2d, isa
from sparsify.kernels.bsr import BSR
from sparsify.kernels.conv import block_geometry, conv_block
from tests.helpers import assert_close
from tests.kernels.conftest import serial_work_set_to
from tests.kernels.test_conv import _reference


def _block_weight(rng, out, cols, r, density, dtype=np.float32, empty_every=3):
    """(out, cols) with about ``density`` of its r x 1 blocks kept (every ``empty_every``-th
    block row emptied), a few zeros inside kept blocks."""
    keep = rng.random((out // r, cols)) < density
    if empty_every:
        keep[1::empty_every] = False
    w = rng.standard_normal((out, cols)) * np.repeat(keep, r, axis=0)
    w[rng.random(w.shape) < 0.05] = 0.0
    return w.astype(dtype)


def _check(rng, n, c, h, w, out, k, stride=1, padding=0, dilation=1, r=4, density=0.3, bias=True,
           activation=None, dtype=np.float32, x=None):
    kh, kw = (k, k) if isinstance(k, int) else k
    w2d = _block_weight(rng, out, c * kh * kw, r, density, dtype)
    w4 = w2d.reshape(out, c, kh, kw)
    b = rng.standard_normal(out).astype(dtype) if bias else None
    x = rng.standard_normal((n, c, h, w)).astype(dtype) if x is None else x
    conv = SparseConv2d(BSR.from_dense(w2d, (r, 1)), b, (kh, kw), stride, padding, dilation, 1, activation)
    assert conv.describe_layout().startswith(f"BSR {r}x1")
    assert_close(conv(x), _reference(x, w4, b, stride, padding, dilation, 1, activation))


@pytest.mark.parametrize("r", [2, 4, 8, 16])
@pytest.mark.parametrize("k, stride, padding, dilation", [
    (1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (5, 2, 2, 1), ((1, 3), 1, (0, 1), 1),
])
def test_block_conv_matches_torch(rng, path, r, k, stride, padding, dilation):
    _check(rng, 2, 5, 11, 13, 2 * r, k, stride, padding, dilation, r=r, activation="relu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "relu6"])
@pytest.mark.parametrize("k", [1, 3])
def test_dtypes_and_activations(rng, dtype, activation, k):
    _check(rng, 1, 6, 9, 9, 8, k, padding=k // 2, activation=activation, dtype=dtype)


@pytest.mark.parametrize("density", [0.0, 1e-3, 1.0])
@pytest.mark.parametrize("k", [1, 3])
def test_densities_and_no_bias(rng, density, k):
    # 0.0: no block at all; 1.0: every block kept (but the emptied block rows).
    _check(rng, 2, 4, 7, 6, 8, k, padding=k // 2, density=density, bias=False)


@pytest.mark.parametrize("hw", [(1, 1), (3, 40), (7, 7), (14, 14), (17, 33), (56, 56)])
@pytest.mark.parametrize("k", [1, 3])
def test_every_step_and_tail(rng, hw, k):
    # Output sizes around the Q x width steps of every variant, so whole steps, partial
    # steps and (1x1) the zero-padded tail all run.
    h, w = hw
    _check(rng, 1, 8, h, w, 16, k, padding=k // 2, activation="relu")


def test_non_contiguous_input(rng):
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)[:, ::2]
    assert not x.flags.c_contiguous
    _check(rng, 2, 4, 9, 9, 8, 3, padding=1, x=x)
    _check(rng, 2, 4, 9, 9, 8, 1, stride=2, x=x)


def test_nan_reaches_exactly_its_receptive_field(rng):
    w2d = np.zeros((4, 9), np.float32)
    w2d[:, :] = 1.0
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 0, 0] = np.nan
    y = SparseConv2d(BSR.from_dense(w2d, (4, 1)), None, 3, 1, 1)(x)
    assert np.isnan(y[0, :, :2, :2]).all()
    assert np.isfinite(y[0, :, 2:, :]).all() and np.isfinite(y[0, :, :, 2:]).all()


@pytest.mark.parametrize("blocksize, groups", [((2, 2), 1), ((1, 4), 1), ((4, 1), 2)])
def test_other_blocks_and_grouped_convs_run_as_csr(rng, blocksize, groups):
    out, c, k = 8, 4, 3
    keep = rng.random((out // blocksize[0], c // groups * k * k // blocksize[1])) < 0.4
    w2d = (rng.standard_normal((out, c // groups * k * k))
           * np.kron(keep, np.ones(blocksize))).astype(np.float32)
    x = rng.standard_normal((2, c, 7, 7)).astype(np.float32)
    conv = SparseConv2d(BSR.from_dense(w2d, blocksize), None, k, 1, 1, 1, groups)
    assert not conv_block(blocksize, groups) and conv.describe_layout() == "CSR"
    assert_close(conv(x), _reference(x, w2d.reshape(out, c // groups, k, k), None, 1, 1, 1, groups, None))


def test_geometry_fits_half_the_registers():
    lanes = {"avx512": 16, "avx2": 8, "portable": 4}
    registers = {"avx512": 32, "avx2": 16, "portable": 16}
    for variant in isa.VARIANTS:
        for r in (2, 4, 8, 16):
            got, rr, q, width = block_geometry(r, variant)
            assert got == r and r % rr == 0
            assert rr * q * (width // lanes[variant]) <= registers[variant] // 2


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 6), h=st.integers(3, 12), w=st.integers(3, 20),
       blocks_out=st.integers(1, 3), r=st.sampled_from([2, 4, 8, 16]), k=st.integers(1, 3),
       stride=st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       density=st.sampled_from([0.0, 0.2, 0.7, 1.0]), seed=st.integers(0, 2**31 - 1),
       serial_work=st.sampled_from([0, float("inf")]))
def test_property_matches_torch(n, c, h, w, blocks_out, r, k, stride, padding, dilation, density, seed, serial_work):
    if h + 2 * padding - dilation * (k - 1) - 1 < 0 or w + 2 * padding - dilation * (k - 1) - 1 < 0:
        return
    with serial_work_set_to(serial_work):
        _check(np.random.default_rng(seed), n, c, h, w, blocks_out * r, k, stride, padding, dilation, r=r,
               density=density)
