"""The depthwise convolution kernels against a float64 reference, and their argument checks.

Three kernels share the work (``kernels/depthwise.py``): the 3x3 one (padding 1, stride 1, or
stride 2 with output rows of at least 16), the channel-blocked one for every whole block of
16 input channels, and the plane one for the channels past the last whole block. The cases
below reach each: channel counts 1 and 3 (planes only), 16 and 32 (blocks only), 17 and 33
(both).
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsify.kernels import KernelArgumentError
from sparsify.kernels import depthwise
from sparsify.kernels.depthwise import DepthwiseConv2d, depthwise_conv2d
from tests.helpers import assert_close


def reference(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), bounds=None,
              input_bounds=None):
    """The depthwise convolution in float64, tap by tap over a zero-padded copy (ONNX Conv, group = C)."""
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    x64 = x.astype(np.float64)
    if input_bounds is not None:
        x64 = np.minimum(np.maximum(x64, input_bounds[0]), input_bounds[1])
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = stride, dilation, padding
    xp = np.pad(np.repeat(x64, c_out // c, axis=1), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho, wo = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1, (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((n, c_out, ho, wo)) + (0.0 if bias is None else bias.astype(np.float64)[None, :, None, None])
    for ky, kx in itertools.product(range(kh), range(kw)):
        rows = xp[:, :, ky * dh:ky * dh + sh * (ho - 1) + 1:sh, kx * dw:kx * dw + sw * (wo - 1) + 1:sw]
        out += weight[None, :, 0, ky, kx, None, None].astype(np.float64) * rows
    if bounds is not None:
        out = np.minimum(np.maximum(out, bounds[0]), bounds[1])
    return out.astype(x.dtype)


def case(rng, n, c, h, w, k, m=1, dtype=np.float32, bias=True):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((c * m, 1, k, k)).astype(dtype)
    return x, weight, rng.standard_normal(c * m).astype(dtype) if bias else None


@contextlib.contextmanager
def kernels(parallel: bool):
    """Every call through the parallel kernels (three chunks per thread, so that planes split
    unevenly between tasks and blocks into bands of output rows) or through their serial twins."""
    saved = depthwise.SERIAL_WORK, depthwise.CHUNKS_PER_THREAD, depthwise.BLOCK_CHUNKS_PER_THREAD
    depthwise.SERIAL_WORK = 0 if parallel else float("inf")
    depthwise.CHUNKS_PER_THREAD = depthwise.BLOCK_CHUNKS_PER_THREAD = 3
    try:
        yield
    finally:
        depthwise.SERIAL_WORK, depthwise.CHUNKS_PER_THREAD, depthwise.BLOCK_CHUNKS_PER_THREAD = saved


@pytest.fixture(params=["parallel", "serial"])
def path(request):
    with kernels(request.param == "parallel"):
        yield request.param


def check(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), bounds=None,
          input_bounds=None) -> np.ndarray:
    """depthwise_conv2d against the reference (NaN where the reference has NaN); returns the output."""
    got = depthwise_conv2d(x, weight, bias, stride, padding, dilation, bounds, input_bounds)
    want = reference(x, weight, bias, stride, padding, dilation, bounds, input_bounds)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    try:
        assert_close(np.nan_to_num(got, nan=9.0), np.nan_to_num(want, nan=9.0))
    except AssertionError as exc:
        raise AssertionError(f"x {x.shape} weight {weight.shape} stride {stride} padding {padding} dilation "
                             f"{dilation} bias {bias is not None} bounds {bounds} input_bounds {input_bounds}: "
                             f"{exc}") from None
    return got


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_float64_reference_over_shapes_kernels_strides_pads_and_dilations(path, dtype):
    rng = np.random.default_rng(0)
    grid = itertools.product([1, 3, 16], [1, 2, 7, 13], [1, 7, 13, 24], [1, 3, 5], [1, 2],
                             [(0, 0, 0, 0), (1, 1, 1, 1), (2, 1, 0, 2)], [1, 2])
    checked = 0
    for k, (c, h, w, kernel, s, pads, d) in enumerate(grid):
        if k % 5 and not (kernel == 3 and pads == (1, 1, 1, 1) and d == 1):  # every 3x3 "same" case, 1 in 5 else
            continue
        span = (kernel - 1) * d + 1
        if h + pads[0] + pads[2] < span or w + pads[1] + pads[3] < span:
            continue
        n, m = 1 + k % 2, 1 + (k // 2) % 2
        x, weight, bias = case(rng, n, c, h, w, kernel, m, dtype, bias=k % 3 > 0)
        bounds = (-0.5, 0.7) if k % 4 == 0 else None
        got = depthwise_conv2d(x, weight, bias, (s, s), pads, (d, d), bounds)
        want = reference(x, weight, bias, (s, s), pads, (d, d), bounds)
        assert got.flags.c_contiguous
        try:
            assert_close(got, want)
        except AssertionError as exc:
            raise AssertionError(f"N={n} C={c} M={m} {h}x{w} kernel {kernel} stride {s} pads {pads} dilation {d} "
                                 f"bias {bias is not None} bounds {bounds}: {exc}") from None
        checked += 1
    assert checked > 150


@pytest.mark.parametrize("h, w", [(16, 16), (17, 33), (6, 40), (3, 16), (14, 14), (7, 7), (112, 2), (4, 31), (3, 32)])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_3x3_kernel_at_plane_sizes_around_its_vector_runs(path, h, w, stride):
    # Padding 1, stride 1 or 2: one run per output plane, rounded up to whole vectors where
    # another plane of the task follows, else ending in a vector that overlaps the run. (At
    # stride 2, rows of fewer than 16 outputs, w < 31, go to the plane kernel here.)
    rng = np.random.default_rng(h * 100 + w)
    x, weight, bias = case(rng, 2, 5, h, w, 3, m=2)
    got = depthwise_conv2d(x, weight, bias, (stride, stride), (1, 1, 1, 1), activation_bounds=(-1.0, 1.0))
    assert_close(got, reference(x, weight, bias, (stride, stride), (1, 1, 1, 1), bounds=(-1.0, 1.0)))


@settings(max_examples=200, deadline=None)
@given(c=st.sampled_from([1, 3, 16, 17, 32, 33]), m=st.integers(1, 2), n=st.integers(1, 2), h=st.integers(1, 30),
       w=st.integers(1, 30), kh=st.integers(1, 7), kw=st.integers(1, 7), sh=st.integers(1, 3), sw=st.integers(1, 3),
       dh=st.integers(1, 2), dw=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 3)] * 4), bias=st.booleans(),
       bounds=st.sampled_from([None, (-0.5, 0.7), (0.0, np.inf)]), input_bounds=st.sampled_from([None, (-1.0, 0.5)]),
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_property_any_kernel_stride_dilation_padding_multiplier_and_channel_count(
        c, m, n, h, w, kh, kw, sh, sw, dh, dw, pads, bias, bounds, input_bounds, dtype, parallel, seed):
    # Kernels 1..7 on either axis, strides 1-3, dilations 1-2, any padding, planes 1x1 to 30x30:
    # blocked steps (8 or 7 outputs) past narrow rows' ends, bands of rows split between tasks,
    # planes under one transpose (16 positions), channels in blocks, past them, or both.
    if h + pads[0] + pads[2] < (kh - 1) * dh + 1 or w + pads[1] + pads[3] < (kw - 1) * dw + 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((c * m, 1, kh, kw)).astype(dtype)
    b = rng.standard_normal(c * m).astype(dtype) if bias else None
    with kernels(parallel):
        check(x, weight, b, (sh, sw), pads, (dh, dw), bounds, input_bounds)


@pytest.mark.parametrize("c, h, kernel, stride", [
    (32, 7, 5, 1), (48, 14, 5, 2), (32, 28, 7, 1), (16, 56, 5, 1), (32, 16, 7, 1), (33, 12, 5, 2), (17, 9, 7, 2),
    (32, 28, 3, 2), (32, 14, 3, 2), (32, 7, 3, 1)])
def test_the_blocked_kernel_at_model_like_shapes(path, c, h, kernel, stride):
    # EfficientNet's 5x5 and ConvNeXt's 7x7 (padding k // 2) on rows of 7*2^k (steps of 7) and
    # of 8*2^k (steps of 8), and MobileNet's 3x3 at stride 2 on rows under 16, which leave the
    # 3x3 kernel for the blocked one; clipped, with a multiplier of 2 on some.
    rng = np.random.default_rng(c * h + kernel)
    m = 2 if h % 2 else 1
    x, weight, bias = case(rng, 2, c, h, h, kernel, m)
    p = kernel // 2
    check(x, weight, bias, (stride, stride), (p, p, p, p), bounds=(-1.5, 1.5), input_bounds=(-2.0, 2.0))
    check(x, weight, None, (stride, stride), (p, p, p, p))


@pytest.mark.parametrize("kernel", [(1, 4), (2, 6), (4, 1), (6, 3), (5, 2), (3, 7)])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (1, 2), (3, 2), (2, 3)])
def test_rectangular_kernels_of_odd_and_even_widths_at_strides_1_to_3(path, kernel, stride):
    # A blocked row step reads its window in one phase per stride, and a kernel width that is
    # not a multiple of the stride ends on a partial step.
    rng = np.random.default_rng(kernel[0] * 10 + kernel[1])
    x = rng.standard_normal((1, 33, 11, 15)).astype(np.float32)
    weight = rng.standard_normal((33, 1, *kernel)).astype(np.float32)
    check(x, weight, rng.standard_normal(33).astype(np.float32), stride, (1, 2, 0, 3), bounds=(-2.0, 2.0))


@pytest.mark.parametrize("kernel, stride, pads", [(3, 1, (1, 2, 0, 1)), (5, 2, (2, 2, 2, 2)), (7, 1, (3, 3, 3, 3)),
                                                  (3, 2, (1, 1, 1, 1)), (2, 3, (0, 1, 1, 0))])
def test_non_finite_inputs_in_blocks_reach_only_their_own_neighbourhood(path, kernel, stride, pads):
    # Blocks move whole pixels of 16 channels: an inf or NaN in one channel must stay in its
    # own channel and its own taps' outputs, at a plane's corners, a row's ends and in the
    # channel past the last block.
    rng = np.random.default_rng(kernel * 10 + stride)
    x, weight, bias = case(rng, 2, 17, 10, 12, kernel)
    x[0, 0, 0, 0] = np.inf
    x[0, 3, 4, 11] = -np.inf  # at a row's end
    x[0, 15, 9, 11] = np.nan  # the last pixel of the last channel of the block
    x[1, 16, 5, 0] = np.inf  # the channel past the block, at a row's start
    x[1, 7, 9, 9] = np.nan  # a pixel every case reads
    got = check(x, weight, bias, (stride, stride), pads, bounds=(-2.0, 2.0))
    assert np.isnan(got[1, 7]).any() and np.isfinite(got[0, 14]).all() and np.isfinite(got[1, 8]).all()


@pytest.mark.parametrize("kernel, stride, pads, w", [(3, 1, (1, 1, 1, 1), 12), (3, 2, (1, 1, 1, 1), 40),
                                                     (5, 1, (2, 2, 2, 2), 12), (7, 2, (3, 3, 3, 3), 12)])
def test_non_finite_weights_meet_the_padding_as_onnx_conv_does(path, kernel, stride, pads, w):
    # 0 * inf is NaN: an inf or NaN weight gives NaN wherever its tap reads the padding, even
    # at outputs the finite taps keep finite. Kernel corners reach the padding at the plane's
    # corners only, which the 3x3 and blocked kernels otherwise leave out of the sums.
    rng = np.random.default_rng(kernel + stride)
    x, weight, bias = case(rng, 1, 17, 9, w, kernel)
    weight[0, 0, 0, 0] = np.inf  # top-left tap: NaN along the top rows and left columns
    weight[5, 0, kernel - 1, kernel - 1] = -np.inf
    weight[16, 0, 0, kernel - 1] = np.nan  # the channel past the block: NaN everywhere
    got = check(x, weight, bias, (stride, stride), pads, bounds=(-3.0, 3.0))
    assert np.isnan(got[0, 0, 0]).all() and np.isnan(got[0, 5, -1]).all() and np.isnan(got[0, 16]).all()
    assert np.isfinite(got[0, 0, 1:, 1:]).any() and np.isfinite(got[0, 1]).all()


def test_a_block_repeats_each_channel_for_a_depth_multiplier():
    # Output channel c*M + m reads input channel c: blocks of 16 input channels, each the
    # source of M output channels 16c*M .. apart.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 33, 9, 11)).astype(np.float32)
    weight = rng.standard_normal((99, 1, 5, 3)).astype(np.float32)
    bias = rng.standard_normal(99).astype(np.float32)
    for stride in (1, 2):
        check(x, weight, bias, (stride, 1), (2, 1, 1, 0), bounds=(-3.0, 3.0))


def test_non_contiguous_input_and_strides_or_dilations_per_axis():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((2, 9, 15, 20)).astype(np.float32)
    x = base[:, ::2, 1:, ::2]  # (2, 5, 14, 10), no axis contiguous but the batch
    assert not x.flags.c_contiguous
    weight = rng.standard_normal((5, 1, 3, 2)).astype(np.float32)
    got = depthwise_conv2d(x, weight, None, (2, 1), (1, 0, 2, 1), (1, 3))
    assert_close(got, reference(x, weight, None, (2, 1), (1, 0, 2, 1), (1, 3)))
    fast = depthwise_conv2d(x, weight[:, :, :, :1].repeat(3, axis=3), None, (2, 2), (1, 1, 1, 1))
    assert_close(fast, reference(x, weight[:, :, :, :1].repeat(3, axis=3), None, (2, 2), (1, 1, 1, 1)))


def test_input_and_output_clips_apply_as_a_clip_before_and_after():
    rng = np.random.default_rng(2)
    for k, s, pads in [(3, 1, (1, 1, 1, 1)), (3, 2, (1, 1, 1, 1)), (5, 2, (2, 2, 2, 2)), (3, 1, (0, 1, 2, 0))]:
        x, weight, bias = case(rng, 1, 4, 9, 12, k)
        x *= 3
        got = depthwise_conv2d(x, weight, bias, (s, s), pads, activation_bounds=(0.0, 6.0), input_bounds=(-1.0, 2.0))
        assert_close(got, reference(x, weight, bias, (s, s), pads, bounds=(0.0, 6.0), input_bounds=(-1.0, 2.0)))
    # lo above hi gives hi everywhere, as ONNX Runtime's Clip does.
    got = depthwise_conv2d(x, weight, bias, activation_bounds=(1.0, -1.0))
    assert np.all(got == -1.0)


@pytest.mark.parametrize("kernel, stride, pads", [(3, 1, (1, 1, 1, 1)), (3, 2, (1, 1, 1, 1)), (3, 1, (1, 2, 0, 1)),
                                                  (5, 1, (2, 2, 2, 2)), (1, 2, (0, 0, 0, 0))])
def test_inf_at_an_edge_reaches_only_its_own_neighbourhood_and_nan_stays_nan(kernel, stride, pads):
    # The 3x3 kernel reads a row's neighbour in place of the padding and masks it off: an
    # inf at a row's end must not leak into the next row's first output. The plane kernel
    # runs TAPS taps a pass: those past kh*kw must not turn an inf into NaN (0 * inf). (The
    # 3x3 kernel takes stride 2 for rows of 16 outputs and more.)
    rng = np.random.default_rng(3)
    w = 40 if (kernel, stride) == (3, 2) else 8
    x, weight, bias = case(rng, 1, 2, 8, w, kernel)
    x[0, 0, 4, w - 1] = np.inf  # at a row's end
    x[0, 0, 1, 2] = -np.inf
    x[0, 1, 4, 0] = np.nan
    got = depthwise_conv2d(x, weight, bias, (stride, stride), pads, activation_bounds=(-2.0, 2.0))
    want = reference(x, weight, bias, (stride, stride), pads, bounds=(-2.0, 2.0))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert_close(np.nan_to_num(got, nan=9.0), np.nan_to_num(want, nan=9.0))
    assert np.isnan(got[0, 1]).sum() > 0 and np.isfinite(got[0, 0]).sum() > 0


def test_a_prepared_convolution_serves_several_input_shapes():
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    conv = DepthwiseConv2d(weight, None, (2, 2), (1, 1, 1, 1), activation_bounds=(0.0, 6.0))
    for shape in [(1, 3, 10, 10), (2, 6, 7, 9), (1, 6, 10, 10), (0, 6, 4, 4)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(conv(x), reference(x, weight, None, (2, 2), (1, 1, 1, 1), bounds=(0.0, 6.0)))


def test_bad_arguments_name_what_is_wrong():
    x = np.zeros((1, 4, 6, 6), np.float32)
    w = np.zeros((4, 1, 3, 3), np.float32)
    bad = [
        (lambda: depthwise_conv2d(x[0], w), r"input should be a 4-D \(N, C, H, W\) float32"),
        (lambda: depthwise_conv2d(x.astype(np.int32), w), r"input should be a 4-D .* float32 array \(the weight's"),
        (lambda: depthwise_conv2d(x.astype(np.float64), w), r"float32 array \(the weight's dtype\)"),
        (lambda: depthwise_conv2d(x, w.astype(np.int64)), r"weight should be a float32/float64 array"),
        (lambda: depthwise_conv2d(x, np.zeros((4, 2, 3, 3), np.float32)), r"shape \(C\*M, 1, kH, kW\)"),
        (lambda: depthwise_conv2d(x, np.zeros((6, 1, 3, 3), np.float32)),
         r"input has 4 channels, but the weight's 6 output channels should be a multiple"),
        (lambda: depthwise_conv2d(x, w, np.zeros(3, np.float32)), r"bias should be None or \(4,\) float32"),
        (lambda: depthwise_conv2d(x, w, padding=(1, -1, 0, 0)), r"padding \(top, left, bottom, right\) should be 4 "
                                                                r"ints >= 0, got \(1, -1, 0, 0\)"),
        (lambda: depthwise_conv2d(x, w, padding=(1, 1)), r"padding .* should be 4 ints"),
        (lambda: depthwise_conv2d(x, w, stride=(0, 1)), r"stride should be 2 ints >= 1, got \(0, 1\)"),
        (lambda: depthwise_conv2d(x, w, dilation=(1.5, 1)), r"dilation should be 2 ints >= 1"),
        (lambda: depthwise_conv2d(x, np.zeros((4, 1, 9, 3), np.float32)),
         r"kernel spans 9 x 3 .* more than the padded input's 6 x 6"),
        (lambda: depthwise_conv2d(x, w, activation_bounds=(0.0,)), r"activation_bounds should be None or two numbers"),
        (lambda: depthwise_conv2d(x, w, input_bounds="0,6"), r"input_bounds should be None or two numbers"),
    ]
    for call, message in bad:
        with pytest.raises(KernelArgumentError, match=message):
            call()
