"""The max-pool kernel against ONNX Runtime's MaxPool (finite inputs: bit for bit) and numpy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sparsify.kernels import KernelArgumentError
from sparsify.kernels.pool import SERIAL_VALUES, max_pool2d


def ort_max_pool(x, kernel, strides, pads, dilations):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=[pads[0], pads[1], pads[2], pads[3]], dilations=list(dilations))
    dtype = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", dtype, list(x.shape))],
                              [helper.make_tensor_value_info("y", dtype, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def numpy_max_pool(x, kernel, strides, pads, dilations):
    """The definition, window by window, in float64 with -inf padding (NaN propagating)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    ho = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    out = np.full(x.shape[:2] + (ho, wo), -np.inf)
    for a in range(kh):
        for b in range(kw):
            tap = xp[:, :, a * dh: a * dh + sh * (ho - 1) + 1: sh, b * dw: b * dw + sw * (wo - 1) + 1: sw]
            out = np.maximum(out, tap)
    return out.astype(x.dtype)


CASES = [  # (N, C, H, W), kernel, strides, pads (top, left, bottom, right), dilations
    ((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # ResNet's stem pool (parallel)
    ((2, 3, 9, 10), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((1, 5, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((1, 4, 7, 9), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 2, 11, 13), (2, 3), (3, 2), (1, 0, 0, 2), (1, 1)),
    ((1, 3, 12, 12), (3, 2), (1, 2), (2, 1, 0, 1), (2, 3)),
    ((1, 2, 5, 6), (5, 4), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((3, 2, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((1, 1, 4, 40), (4, 5), (2, 2), (3, 4, 3, 4), (1, 1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, strides, pads, dilations", CASES)
def test_max_pool_equals_ort_bit_for_bit(rng, dtype, shape, kernel, strides, pads, dilations):
    x = rng.standard_normal(shape).astype(dtype)
    got = max_pool2d(x, kernel, strides, pads, dilations)
    want = ort_max_pool(x, kernel, strides, pads, dilations)
    assert got.shape == want.shape and got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, numpy_max_pool(x, kernel, strides, pads, dilations))


def test_both_thread_paths_and_strided_inputs(rng):
    # One call under SERIAL_VALUES outputs, one over; the input a non-contiguous view.
    for side in (8, 2 * int(np.sqrt(SERIAL_VALUES)) + 4):
        x = rng.standard_normal((1, 4, 2 * side, 2 * side + 3)).astype(np.float32)[:, :, ::2, 1:-2]
        args = ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
        np.testing.assert_array_equal(max_pool2d(x, *args), numpy_max_pool(x, *args))


def test_nan_propagates_and_inf_is_kept(rng):
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    x[0, 0, 4, 4] = np.nan  # a NaN in the middle of some windows and at the edge of others
    x[0, 0, 0, 0] = np.nan  # one in a corner, first in its windows
    x[0, 1] = -np.inf
    x[0, 1, 8, 8] = np.inf
    args = ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    got = max_pool2d(x, *args)
    want = numpy_max_pool(x, *args)
    np.testing.assert_array_equal(got, want)  # NaN positions equal too
    assert np.isnan(got[0, 0, 2, 2]) and np.isnan(got[0, 0, 0, 0]) and not np.isnan(got[0, 0, 3, 3])
    assert got[0, 1, 0, 0] == -np.inf and got[0, 1, 4, 4] == np.inf


@pytest.mark.parametrize("call, message", [
    (lambda x: max_pool2d(x.astype(np.int32), (2, 2)), "float32/float64"),
    (lambda x: max_pool2d(x[0], (2, 2)), r"\(N, C, H, W\)"),
    (lambda x: max_pool2d(x, (2,)), "kernel"),
    (lambda x: max_pool2d(x, (2, 2), strides=(0, 1)), "strides"),
    (lambda x: max_pool2d(x, (2, 2), dilations=(1, True)), "dilations"),
    (lambda x: max_pool2d(x, (2, 2), pads=(2, 0, 0, 0)), "below the kernel"),
    (lambda x: max_pool2d(x, (2, 2), pads=(0, 0, 0)), "four ints"),
    (lambda x: max_pool2d(x, (6, 2)), "too small"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(KernelArgumentError, match=message):
        call(np.ones((1, 2, 5, 5), np.float32))


def test_the_output_has_slack_for_a_following_pointwise_conv(rng):
    from sparsify.kernels.buffers import readable_after
    from sparsify.kernels.conv import POINTWISE_SLACK

    y = max_pool2d(rng.standard_normal((1, 3, 9, 9)).astype(np.float32), (3, 3), (2, 2), (1, 1, 1, 1))
    assert y.flags.c_contiguous and readable_after(y) >= POINTWISE_SLACK * y.itemsize
