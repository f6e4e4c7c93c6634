"""Channel labels follow reshape/permute exactly: checked against torch on a tensor of labels."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch

from sparsify.graph import labels as L
from sparsify.graph.labels import Lab, LabelError


def _full(lab: Lab, shape: list[int]) -> np.ndarray:
    """Labels of every element of a tensor of static `shape` (factors expanded)."""
    sizes = [int(f) for fs in lab.factors for f in fs]
    return np.broadcast_to(lab.arr, sizes).reshape(shape)


@pytest.mark.parametrize("shape,dim,out_shape,perm", [
    ((2, 6, 3, 4), 1, (2, 72), None),                 # conv -> flatten: blocks of H*W features
    ((2, 5, 12), 2, (2, 5, 3, 4), (0, 2, 1, 3)),      # (B, T, C) -> heads, transpose
    ((2, 12, 3, 3), 1, (2, 3, 4, 3, 3), (0, 2, 1, 3, 4)),  # channel shuffle, first half
    ((2, 12), 1, (2, 2, 6), None),
])
def test_reshape_and_permute_match_torch(shape, dim, out_shape, perm):
    lab = L.simple_lab(list(shape), dim, np.arange(shape[dim]))
    ref = torch.arange(shape[dim]).reshape([-1 if d == dim else 1 for d in range(len(shape))]).expand(shape)
    out = L.reshape(lab, list(out_shape))
    ref = ref.reshape(out_shape)
    assert np.array_equal(_full(out, list(out_shape)), ref.numpy())
    if perm is not None:
        out = L.permute(out, list(perm))
        ref = ref.permute(perm)
        assert np.array_equal(_full(out, list(ref.shape)), ref.numpy())
        flat = [shape[0], int(np.prod(ref.shape[1:]))]
        back = L.reshape(out, flat)
        assert np.array_equal(_full(back, flat), ref.reshape(flat).numpy())


def test_dynamic_batch_merges_with_heads_and_splits_back():
    b = sympy.Symbol("s0", positive=True, integer=True)
    lab = L.simple_lab([5, b, 12], 2, np.arange(12))  # (T, B, C) as in nn.MultiheadAttention
    merged = L.reshape(lab, [5, b * 3, 4])  # (T, B*H, D)
    assert [len(f) for f in merged.factors] == [1, 2, 1]
    assert merged.arr.shape == (1, 1, 3, 4)
    assert np.array_equal(merged.arr.reshape(3, 4), np.arange(12).reshape(3, 4))
    back = L.reshape(merged, [5 * b, 12])
    assert np.array_equal(back.dim_labels(1), np.arange(12))


def test_static_split_of_a_channel_factor_next_to_the_batch():
    b = sympy.Symbol("s0", positive=True, integer=True)
    lab = Lab([[b, 4], [6]], np.arange(4).reshape(1, 4, 1), False)
    out = L.reshape(lab, [b * 2, 12])  # (B*4, 6) -> (B*2, 2*6): the 4 channels split 2 x 2
    assert out.factors[0][1] == 2 and out.factors[1][0] == 2
    assert np.array_equal(out.arr.reshape(2, 2), np.arange(4).reshape(2, 2))


def test_reshape_whose_dims_do_not_nest_is_refused():
    lab = L.simple_lab([2, 6], 1, np.arange(6))
    with pytest.raises(LabelError, match="do not nest|cannot"):
        L.reshape(lab, [3, 4])
