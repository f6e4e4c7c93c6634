"""The arrays the CSR pass stores for a weight: the kernels' CSR / BSR, in the file's index dtypes."""

import numpy as np
import pytest
from scipy.sparse import bsr_matrix, csr_matrix

from sparsify.passes.csr_arrays import stored_arrays


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(7, 5), (3, 40000), (0, 4), (4, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_csr_round_trip_with_empty_rows(rng, shape, dtype):
    w = np.where(rng.random(shape) < 0.3, rng.standard_normal(shape), 0).astype(dtype)
    if shape[0]:
        w[0] = 0  # an empty row
    data, indices, indptr = stored_arrays(w)
    assert data.dtype == dtype and indptr.dtype == np.int32
    assert np.array_equal(csr_matrix((data, indices.astype(np.int64), indptr), shape=shape).toarray(), w)
    assert data.size == np.count_nonzero(w)


def test_fully_pruned_and_fully_dense(rng):
    data, indices, indptr = stored_arrays(np.zeros((3, 4), np.float32))
    assert data.size == indices.size == 0 and list(indptr) == [0, 0, 0, 0]
    w = rng.standard_normal((3, 4)).astype(np.float32) + 10
    data, indices, indptr = stored_arrays(w)
    assert np.array_equal(data, w.reshape(-1)) and list(indptr) == [0, 4, 8, 12]


def test_bsr_stores_whole_blocks(rng):
    w = np.zeros((8, 6), np.float32)
    w[4:8, 2:4] = rng.standard_normal((4, 2))
    w[5, 3] = 0  # a zero inside a stored block stays stored
    data, indices, indptr = stored_arrays(w, (4, 2))
    assert data.shape == (1, 4, 2) and list(indices) == [1] and list(indptr) == [0, 0, 1]
    assert np.array_equal(bsr_matrix((data, indices.astype(np.int64), indptr), shape=w.shape).toarray(), w)
