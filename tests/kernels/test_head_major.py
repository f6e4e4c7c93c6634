"""SparseLinear.head_major against the layer's output reshaped into heads and transposed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSR, KernelArgumentError, SparseLinear
from tests.kernels.conftest import random_sparse, serial_work_set_to


def _split(y: np.ndarray, heads: int) -> np.ndarray:
    n, t, o = y.shape
    return np.ascontiguousarray(y.reshape(n, t, heads, o // heads).transpose(0, 2, 1, 3))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), t=st.integers(1, 40), f=st.integers(1, 40), d=st.integers(1, 20),
       heads=st.integers(1, 5), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       activation=st.sampled_from([None, "relu", "gelu"]), seed=st.integers(0, 2**16))
def test_head_major_is_the_layer_split_into_heads_bit_for_bit(n, t, f, d, heads, density, activation, seed):
    rng = np.random.default_rng(seed)
    o = heads * d
    layer = SparseLinear(CSR.from_dense(random_sparse(rng, (o, f), density)),
                         rng.standard_normal(o).astype(np.float32), activation)
    x = rng.standard_normal((n, t, f)).astype(np.float32)
    got = layer.head_major(x, heads)
    assert got.shape == (n, heads, t, d) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, _split(layer(x), heads))


@pytest.mark.parametrize("serial", [True, False])
def test_head_major_on_both_thread_paths_and_non_contiguous_input(rng, serial):
    layer = SparseLinear(CSR.from_dense(random_sparse(rng, (96, 48), 0.2)))
    x = rng.standard_normal((2, 48, 33)).astype(np.float32).transpose(0, 2, 1)  # (2, 33, 48), strided
    with serial_work_set_to(np.inf if serial else 0):
        np.testing.assert_array_equal(layer.head_major(x, 6), _split(layer(np.ascontiguousarray(x)), 6))


@pytest.mark.parametrize("heads, x_shape, message", [
    (5, (1, 8, 16), "heads 5 should be an int >= 1 dividing out_features 24"),
    (0, (1, 8, 16), "heads 0 should be"),
    (True, (1, 8, 16), "heads True should be"),
    (2, (8, 16), r"head_major input shape \(8, 16\) should be \(N, T, 16\)"),
    (2, (1, 8, 15), "should end in 16"),
])
def test_head_major_bad_arguments_are_named(rng, heads, x_shape, message):
    layer = SparseLinear(CSR.from_dense(random_sparse(rng, (24, 16), 0.5)))
    with pytest.raises(KernelArgumentError, match=message):
        layer.head_major(rng.standard_normal(x_shape).astype(np.float32), heads)
