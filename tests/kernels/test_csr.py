"""CSR construction, conversion and format checking."""

from __future__ import annotations

import numpy as np
import pytest

from sparsify.kernels import CSR, CSRFormatError, choose_index_dtypes
from tests.helpers import assert_close
from tests.kernels.conftest import random_sparse


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (5, 9), (0, 4), (4, 0)])
@pytest.mark.parametrize("density", [0.0, 1e-3, 0.5, 1.0])
def test_dense_round_trip(rng, dtype, shape, density):
    w = random_sparse(rng, shape, density, dtype)
    m = CSR.from_dense(w)
    assert m.shape == shape
    assert m.dtype == np.dtype(dtype)
    assert m.nnz == np.count_nonzero(w)
    assert m.fully_checked
    m.check_format(full=True)
    assert_close(m.to_dense(), w)
    size = shape[0] * shape[1]
    assert m.density == pytest.approx(np.count_nonzero(w) / size if size else 0.0)


def test_from_dense_respects_mask_and_drops_kept_zeros():
    w = np.array([[1.0, 0.0, 3.0], [4.0, 5.0, 0.0]], dtype=np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 1]], dtype=bool)
    m = CSR.from_dense(w, mask=mask)
    assert m.nnz == 2  # (0,0) and (1,0); (0,1) and (1,2) are kept but exactly zero
    assert_close(m.to_dense(), w * mask)
    assert m.indptr.tolist() == [0, 1, 2]
    assert m.indices.tolist() == [0, 0]


def test_index_dtype_is_chosen_and_overridable():
    w = np.eye(3, dtype=np.float32)
    m = CSR.from_dense(w)
    assert (m.indices.dtype, m.indptr.dtype) == (np.int16, np.int32)
    m = CSR.from_dense(w, index_dtype=np.int32)
    assert (m.indices.dtype, m.indptr.dtype) == (np.int32, np.int32)
    m = CSR.from_dense(w, index_dtype=np.int64)
    assert (m.indices.dtype, m.indptr.dtype) == (np.int64, np.int64)
    assert choose_index_dtypes((10, 32768), 5) == (np.int16, np.int32)
    assert choose_index_dtypes((10, 32769), 5) == (np.int32, np.int32)
    assert choose_index_dtypes((10, 2**31), 5) == (np.int32, np.int32)
    assert choose_index_dtypes((10, 2**31 + 1), 5) == (np.int64, np.int32)
    assert choose_index_dtypes((10, 10), 2**31) == (np.int16, np.int64)
    with pytest.raises(CSRFormatError, match="index_dtype uint8 should be int16, int32 or int64"):
        CSR.from_dense(w, index_dtype=np.uint8)


def test_int16_indices_must_hold_the_columns():
    with pytest.raises(CSRFormatError, match="holds column indices up to 32767, but cols is 32769"):
        CSR(np.ones(1, np.float32), np.zeros(1, np.int16), np.array([0, 1], np.int32), (1, 32769))


def test_arrays_are_read_only():
    m = CSR.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError):
        m.indices[0] = 2


def test_row_slice(rng):
    w = random_sparse(rng, (9, 6), 0.4)
    m = CSR.from_dense(w)
    s = m.row_slice(2, 7)
    assert s.fully_checked
    assert_close(s.to_dense(), w[2:7])
    with pytest.raises(CSRFormatError, match="row slice 3:10"):
        m.row_slice(3, 10)


def _arrays():
    # 3 x 4 matrix: row 0 -> cols 0, 2; row 1 empty; row 2 -> cols 1, 3
    return (np.array([1.0, 2.0, 3.0, 4.0], np.float32), np.array([0, 2, 1, 3], np.int32),
            np.array([0, 2, 2, 4], np.int32))


def test_valid_arrays_pass_full_check():
    m = CSR(*_arrays(), (3, 4))
    assert not m.fully_checked
    m.check_format(full=True)
    assert m.fully_checked
    assert_close(m.to_dense(), np.array([[1, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, 4]], np.float32))


@pytest.mark.parametrize("mutate, shape, message", [
    (lambda d, i, p: (d, i, p[:-1]), (3, 4), "indptr size 3 should be 4"),
    (lambda d, i, p: (d, i, np.array([1, 2, 2, 4], np.int32)), (3, 4), r"indptr\[0\] is 1 but should be 0"),
    (lambda d, i, p: (d, i[:3], p), (3, 4), "indices size 3 should be 4"),
    (lambda d, i, p: (d[:3], i, p), (3, 4), "data size 3 should be 4"),
    (lambda d, i, p: (d.astype(np.int64), i, p), (3, 4), "data dtype int64 should be float32 or float64"),
    (lambda d, i, p: (d, i.astype(np.float32), p), (3, 4), "indices dtype float32 should be int16, int32 or int64"),
    (lambda d, i, p: (d, i, p.astype(np.int16)), (3, 4), "indptr dtype int16 should be int32 or int64"),
    (lambda d, i, p: (d.reshape(2, 2), i, p), (3, 4), "data should be 1-D"),
    (lambda d, i, p: (d, i, p), (3, -4), r"shape \(3, -4\)"),
])
def test_cheap_checks_reject_at_construction(mutate, shape, message):
    with pytest.raises(CSRFormatError, match=message):
        CSR(*mutate(*_arrays()), shape)


@pytest.mark.parametrize("indices, indptr, message", [
    ([0, 2, 3, 1], [0, 2, 2, 4], r"indices\[3\] = 1 follows 3 \(unsorted\)"),
    ([2, 0, 1, 3], [0, 2, 2, 4], r"row 0 .* indices\[1\] = 0 follows 2 \(unsorted\)"),
    ([0, 2, 3, 3], [0, 2, 2, 4], r"indices\[3\] = 3 follows 3 \(duplicate\)"),
    ([0, 2, 1, 4], [0, 2, 2, 4], r"column index 4 at indices\[3\] \(row 2\) should be in \[0, 4\)"),
    ([0, -1, 1, 3], [0, 2, 2, 4], r"column index -1 at indices\[1\] \(row 0\) should be in \[0, 4\)"),
    ([0, 2, 1, 3], [0, 3, 1, 4], r"non-decreasing, but indptr\[1\] = 3 > indptr\[2\] = 1"),
])
def test_full_check_rejects(indices, indptr, message):
    data = np.ones(4, np.float32)
    m = CSR(data, np.array(indices, np.int32), np.array(indptr, np.int32), (3, 4))
    with pytest.raises(CSRFormatError, match=message):
        m.check_format(full=True)
    assert not m.fully_checked


def test_descending_across_rows_is_fine():
    # Row 0 ends at column 3, row 1 starts at column 0: not a sortedness violation.
    m = CSR(np.ones(3, np.float32), np.array([1, 3, 0], np.int32), np.array([0, 2, 3], np.int32), (2, 4))
    m.check_format(full=True)
    assert m.fully_checked


def test_csr_format_error_is_a_value_error():
    assert issubclass(CSRFormatError, ValueError)


def test_from_dense_rejects_bad_input():
    with pytest.raises(CSRFormatError, match="weight should be 2-D, got 1-D"):
        CSR.from_dense(np.ones(3, np.float32))
    with pytest.raises(CSRFormatError, match="weight dtype int64 should be float32 or float64"):
        CSR.from_dense(np.ones((3, 3), np.int64))
    with pytest.raises(CSRFormatError, match=r"mask shape \(2, 3\) should be \(3, 3\)"):
        CSR.from_dense(np.ones((3, 3), np.float32), mask=np.ones((2, 3), bool))


def test_kernel_array_unwraps_only_whole_readonly_views():
    from sparsify.kernels.csr import _readonly, kernel_array

    base = np.arange(6, dtype=np.int64)
    view = _readonly(base)
    assert kernel_array(view) is base and kernel_array(base) is base
    part = _readonly(base[1:4])
    assert kernel_array(part) is part  # its base is larger: not the same array
    frozen = np.arange(3.0)
    frozen.flags.writeable = False
    assert kernel_array(frozen) is frozen
    held = _readonly(frozen)
    assert kernel_array(held) is held  # the base itself is read-only


@pytest.mark.parametrize("broken, array", [
    (dict(indptr=np.array([0, 3, 2], np.int32)), "indptr"),
    (dict(indices=np.array([0, 5], np.int32)), "indices"),
    (dict(indices=np.array([1, 0], np.int32)), "indices"),
    (dict(data=np.zeros(3, np.float32)), "data"),
])
def test_format_errors_name_their_array(broken, array):
    parts = dict(data=np.ones(2, np.float32), indices=np.array([0, 1], np.int32), indptr=np.array([0, 2, 2], np.int32))
    parts.update(broken)
    with pytest.raises(CSRFormatError) as exc:
        CSR(parts["data"], parts["indices"], parts["indptr"], (2, 3)).check_format(full=True)
    assert exc.value.array == array
