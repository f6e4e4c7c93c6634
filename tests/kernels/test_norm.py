"""The layer-norm kernel against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from sparsify.kernels import KernelArgumentError
from sparsify.kernels.norm import SERIAL_VALUES, add_layer_norm, layer_norm
from tests.helpers import assert_close


def reference(x, scale, bias, eps):
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=1, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps) * scale + (0 if bias is None else bias)).astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (128, 256), (SERIAL_VALUES // 64 + 1, 64)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_matches_float64_reference(rng, dtype, shape, with_bias):
    # Rows with a large common offset: a one-pass E[x^2] - E[x]^2 would lose the variance.
    x = (rng.standard_normal(shape) * 3 + 1000).astype(dtype)
    scale = rng.standard_normal(shape[1]).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype) if with_bias else None
    assert_close(layer_norm(x, scale, bias, 1e-5), reference(x, scale, bias, 1e-5))


def test_constant_rows_give_the_bias_and_nan_stays_in_its_row(rng):
    x = np.ones((3, 8), np.float32)
    x[2, 5] = np.nan
    scale = rng.standard_normal(8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    y = layer_norm(x, scale, bias, 1e-5)
    assert np.array_equal(y[:2], np.stack([bias, bias]))
    assert np.isnan(y[2]).all()


def test_bad_arguments_are_rejected():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(KernelArgumentError, match=r"scale should be \(4,\) float32"):
        layer_norm(x, np.ones(3, np.float32), None, 1e-5)
    with pytest.raises(KernelArgumentError, match=r"bias should be \(4,\) float32"):
        layer_norm(x, np.ones(4, np.float32), np.ones(4, np.float64), 1e-5)
    with pytest.raises(KernelArgumentError, match="2-D float32/float64"):
        layer_norm(np.zeros(4, np.float32), np.ones(4, np.float32), None, 1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (SERIAL_VALUES // 64 + 1, 64)])
def test_add_layer_norm_equals_the_add_then_the_norm(rng, dtype, shape):
    x = (rng.standard_normal(shape) * 3 + 1000).astype(dtype)
    y = rng.standard_normal(shape).astype(dtype)
    scale, bias = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    out, total = add_layer_norm(x, y, scale, bias, 1e-5)
    assert np.array_equal(total, x + y)  # rounded as a separate Add
    assert_close(out, reference(x + y, scale, bias, 1e-5))
    with pytest.raises(KernelArgumentError, match="one shape and dtype"):
        add_layer_norm(x, y.reshape(-1), scale, bias, 1e-5)
