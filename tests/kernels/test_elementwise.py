"""The fused residual Add + ReLU kernel against numpy's two steps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsify.kernels import KernelArgumentError
from sparsify.kernels.elementwise import CHUNK, SERIAL_VALUES, add_relu
from sparsify.runtime import glue


def numpy_add_relu(x, y):
    return np.maximum(np.add(x, y), x.dtype.type(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (CHUNK + 1,), (SERIAL_VALUES - 1,), (SERIAL_VALUES,),
                                   (1, 256, 56, 56), (2, 3, CHUNK + 5)])
def test_add_relu_equals_numpy_bit_for_bit(rng, dtype, shape):
    x, y = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    out = add_relu(x, y)
    assert out.shape == shape and out.dtype == dtype
    np.testing.assert_array_equal(out, numpy_add_relu(x, y))
    assert (out >= 0).all() and (out == 0).any() == (numpy_add_relu(x, y) == 0).any()
    assert np.shares_memory(out, x) is False and np.shares_memory(out, y) is False


def test_add_relu_propagates_nan_and_inf_and_reads_strided_inputs(rng):
    x = rng.standard_normal((SERIAL_VALUES + 3, 2)).astype(np.float32)
    y = rng.standard_normal((SERIAL_VALUES + 3, 2)).astype(np.float32)
    x[5, 0], x[6, 0], x[7, 0], y[7, 0] = np.nan, np.inf, -np.inf, -1.0
    xs, ys = x[:, ::-1], y.T.copy().T  # a reversed view and an F-ordered copy
    out = add_relu(xs, ys)
    np.testing.assert_array_equal(out, numpy_add_relu(xs, ys))
    assert np.isnan(out[5, 1]) and out[6, 1] == np.inf and out[7, 1] == 0


@pytest.mark.parametrize("bad", [
    (np.ones(3, np.float32), np.ones(4, np.float32)),
    (np.ones(3, np.float32), np.ones(3, np.float64)),
    (np.ones(3, np.int32), np.ones(3, np.int32)),
    (np.ones(3, np.float32), [1.0, 2.0, 3.0]),
])
def test_add_relu_refuses_mismatched_or_non_float_inputs(bad):
    with pytest.raises(KernelArgumentError, match="add_relu inputs"):
        add_relu(*bad)


def test_glue_add_relu_uses_the_kernel_and_falls_back_for_broadcasts(rng, monkeypatch):
    import sparsify.kernels.elementwise as elementwise

    calls = []
    original = elementwise.add_relu
    monkeypatch.setattr(elementwise, "add_relu", lambda x, y: calls.append(x.shape) or original(x, y))
    fn = glue.compile_with_relu(onnx.helper.make_node("Add", ["a", "b"], ["c"]), {})
    x = rng.standard_normal((1, 64, 32, 32)).astype(np.float32)
    y = rng.standard_normal((1, 64, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(fn([x, y])[0], numpy_add_relu(x, y))
    assert calls == [x.shape]
    bias = rng.standard_normal((1, 64, 1, 1)).astype(np.float32)  # a broadcast: numpy, then an in-place ReLU
    np.testing.assert_array_equal(fn([x, bias])[0], numpy_add_relu(x, bias))
    assert calls == [x.shape]
    sub = glue.compile_with_relu(onnx.helper.make_node("Sub", ["a", "b"], ["c"]), {})
    np.testing.assert_array_equal(sub([x, y])[0], np.maximum(x - y, 0))


def test_the_sum_has_slack_for_a_following_pointwise_conv(rng):
    from sparsify.kernels.buffers import readable_after
    from sparsify.kernels.conv import POINTWISE_SLACK

    x = rng.standard_normal((1, 8, 7, 7)).astype(np.float32)
    out = add_relu(x, x)
    assert out.flags.c_contiguous and readable_after(out) >= POINTWISE_SLACK * out.itemsize
