"""The block-sparse (BSR) format and linear layer against dense numpy, every block shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSRFormatError, KernelArgumentError
from sparsify.kernels.bsr import BSR, SIDES, SparseBlockLinear, kernel_block, spmm_geometry
from tests.kernels.target_check import block_weight, check_block_case

BLOCKS = [(r, c) for r in SIDES for c in SIDES if r * c > 1]


@settings(max_examples=80, deadline=None)
@given(block=st.sampled_from(BLOCKS), blocks_out=st.integers(1, 12), blocks_in=st.integers(1, 12),
       density=st.sampled_from([0.0, 1e-3, 0.1, 0.5, 1.0]), batch=st.sampled_from([1, 2, 3, 8, 17, 33, 70]),
       seed=st.integers(0, 2**31 - 1), activation=st.sampled_from([None, "relu"]), bias=st.booleans(),
       strided=st.booleans(), serial=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_block_linear_matches_numpy(**case):
    check_block_case(**case)


@pytest.mark.parametrize("block", [(4, 1), (1, 4), (16, 1), (2, 8)])
def test_gelu_and_leading_dims(rng, block):
    import torch

    w = block_weight(rng, 4 * 16, 3 * 16, block, 0.4)
    b = rng.standard_normal(64).astype(np.float32)
    layer = SparseBlockLinear(BSR.from_dense(w, block), b, "gelu")
    x = rng.standard_normal((2, 5, 48)).astype(np.float32)
    y = layer(x)
    expect = torch.nn.functional.gelu(torch.from_numpy(x.astype(np.float64) @ w.T.astype(np.float64) + b)).numpy()
    assert y.shape == (2, 5, 64) and np.abs(y - expect).max() < 1e-5


def test_format_round_trip_and_geometry(rng):
    w = block_weight(rng, 32, 48, (4, 2), 0.3)
    b = BSR.from_dense(w, (4, 2))
    assert b.blocksize == (4, 2) and b.shape == (32, 48) and b.values.shape[1:] == (4, 2)
    assert np.array_equal(b.to_dense(), w) and np.array_equal(b.to_csr().to_dense(), w)
    assert b.nnz == b.nblocks * 8 and b.density == b.nnz / (32 * 48)
    assert kernel_block((4, 1)) and not kernel_block((3, 1)) and not kernel_block((1, 1))
    for variant in ("avx512", "avx2", "portable"):
        for r in SIDES:
            width, rows, chains = spmm_geometry(r, variant)
            assert r % rows == 0 and width in (8, 16, 32) and chains in (1, 2, 4)


@pytest.mark.parametrize("make, message", [
    (lambda v, i, p: BSR(v, i, p, (32, 48), (5, 2)), r"blocksize \(5, 2\) should be positive and divide shape"),
    (lambda v, i, p: BSR(v.reshape(-1), i, p, (32, 48), (4, 2)), r"block values shape .* should be \[blocks, 4, 2\]"),
    (lambda v, i, p: BSR(v, i, p[:-1], (32, 48), (4, 2)), "indptr size 8 should be 9"),
    (lambda v, i, p: BSR(v[:-1], i[:-1], p, (32, 48), (4, 2)), r"indices size .* should be"),
])
def test_bad_arrays_are_refused(rng, make, message):
    b = BSR.from_dense(block_weight(rng, 32, 48, (4, 2), 0.5), (4, 2))
    with pytest.raises(CSRFormatError, match=message):
        make(b.values, b.pattern.indices, b.pattern.indptr)


def test_out_of_range_block_column_fails_the_full_check(rng):
    b = BSR.from_dense(block_weight(rng, 32, 48, (4, 2), 0.5), (4, 2))
    idx = b.pattern.indices.copy()
    idx[0] = 24  # 48 / 2 block columns
    bad = BSR(b.values, idx, b.pattern.indptr, (32, 48), (4, 2))
    with pytest.raises(CSRFormatError, match=r"block pattern: block column index 24 at indices\[0\]"):
        bad.check_format(full=True)
    with pytest.raises(CSRFormatError, match="block pattern"):
        SparseBlockLinear(bad)


def test_layer_rejects_bad_inputs(rng):
    layer = SparseBlockLinear(BSR.from_dense(block_weight(rng, 8, 8, (4, 1), 0.5), (4, 1)))
    with pytest.raises(KernelArgumentError, match="should end in 8"):
        layer(np.zeros((2, 7), np.float32))
    with pytest.raises(KernelArgumentError, match="dtype float64 should be float32"):
        layer(np.zeros((2, 8)))
    with pytest.raises(KernelArgumentError, match="has no kernel"):
        SparseBlockLinear(BSR.from_dense(np.ones((6, 6), np.float32), (3, 1)))
    assert layer(np.zeros((0, 8), np.float32)).shape == (0, 8)
