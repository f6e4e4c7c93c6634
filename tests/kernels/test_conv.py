"""SparseConv2d / csr_conv2d against torch's conv2d in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSR, KernelArgumentError, SparseConv2d, csr_conv2d
from sparsify.kernels.bsr import BSR
from sparsify.kernels.buffers import readable_after
from sparsify.kernels.conv import POINTWISE_SLACK
from tests.helpers import assert_close
from tests.kernels.conftest import random_sparse, serial_work_set_to


def _reference(x, w4, bias, stride, padding, dilation, groups, activation):
    t = torch.nn.functional.conv2d(
        torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w4.astype(np.float64)),
        None if bias is None else torch.from_numpy(bias.astype(np.float64)),
        stride=stride, padding=padding, dilation=dilation, groups=groups)
    if activation == "relu":
        t = torch.relu(t)
    elif activation == "gelu":
        t = torch.nn.functional.gelu(t)
    elif activation == "relu6":
        t = torch.nn.functional.relu6(t)
    return t.numpy().astype(x.dtype)


def _check(rng, n, c, h, w, out, k, stride=1, padding=0, dilation=1, groups=1, density=0.4,
           bias=True, activation=None, dtype=np.float32):
    kh, kw = (k, k) if isinstance(k, int) else k
    w4 = random_sparse(rng, (out, c // groups * kh * kw), density, dtype).reshape(out, c // groups, kh, kw)
    b = rng.standard_normal(out).astype(dtype) if bias else None
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    y = csr_conv2d(x, CSR.from_dense(w4.reshape(out, -1)), b, (kh, kw), stride, padding, dilation,
                   groups, activation)
    assert_close(y, _reference(x, w4, b, stride, padding, dilation, groups, activation))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "relu6"])
def test_pointwise(rng, path, dtype, activation):
    _check(rng, 3, 8, 5, 7, 6, 1, activation=activation, dtype=dtype)


@pytest.mark.parametrize("k, stride, padding, dilation", [
    (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 0, 1), (3, 1, 2, 2), (5, 2, 2, 1), ((1, 3), 1, (0, 1), 1),
    (1, 2, 0, 1), (2, (1, 2), (1, 0), (2, 1)), (3, 3, 0, 1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spatial(rng, path, k, stride, padding, dilation, dtype):
    _check(rng, 2, 5, 9, 8, 7, k, stride, padding, dilation, dtype=dtype)


@pytest.mark.parametrize("groups, c, out", [(2, 6, 4), (3, 6, 9), (6, 6, 6)])
def test_groups(rng, path, groups, c, out):
    _check(rng, 2, c, 6, 6, out, 3, 1, 1, 1, groups=groups, activation="relu")


@pytest.mark.parametrize("density", [0.0, 1e-3, 1.0])
def test_densities_and_no_bias(rng, density):
    _check(rng, 2, 4, 6, 6, 5, 3, padding=1, density=density, bias=False)


def test_large_spatial_uses_full_tiles(rng):
    # H*W = 1023 spans many 16-wide tiles plus a padded last one, in several image blocks.
    _check(rng, 3, 16, 33, 31, 16, 3, padding=1, density=0.3)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(3, 10), w=st.integers(3, 10),
       out=st.integers(1, 6), k=st.integers(1, 3), stride=st.integers(1, 3),
       padding=st.integers(0, 2), dilation=st.integers(1, 2), seed=st.integers(0, 2**31 - 1),
       serial_work=st.sampled_from([0, float("inf")]))
def test_property_matches_torch(n, c, h, w, out, k, stride, padding, dilation, seed, serial_work):
    if (h + 2 * padding - dilation * (k - 1) - 1) < 0 or (w + 2 * padding - dilation * (k - 1) - 1) < 0:
        return
    with serial_work_set_to(serial_work):
        _check(np.random.default_rng(seed), n, c, h, w, out, k, stride, padding, dilation)


def test_non_contiguous_input(rng):
    w4 = random_sparse(rng, (4, 3 * 9), 0.5).reshape(4, 3, 3, 3)
    x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)[:, ::2]
    assert not x.flags.c_contiguous
    conv = SparseConv2d(CSR.from_dense(w4.reshape(4, -1)), kernel_size=3, padding=1)
    assert_close(conv(x), _reference(x, w4, None, 1, 1, 1, 1, None))
    conv1 = SparseConv2d(CSR.from_dense(w4[:, :, 1, 1].copy()), kernel_size=1)
    assert_close(conv1(x), _reference(x, w4[:, :, 1:2, 1:2], None, 1, 0, 1, 1, None))


def test_rejects_bad_arguments(rng):
    m = CSR.from_dense(random_sparse(rng, (4, 18), 0.5))
    conv = SparseConv2d(m, kernel_size=3)
    assert conv.in_channels == 2
    with pytest.raises(KernelArgumentError, match=r"input shape \(1, 3, 5, 5\) should be \(N, 2, H, W\)"):
        conv(np.ones((1, 3, 5, 5), np.float32))
    with pytest.raises(KernelArgumentError, match="input dtype float64 should be float32"):
        conv(np.ones((1, 2, 5, 5)))
    with pytest.raises(KernelArgumentError, match=r"output would be \(0, 0\)"):
        conv(np.ones((1, 2, 2, 2), np.float32))
    with pytest.raises(KernelArgumentError, match="18 columns, which should be a multiple of kh\\*kw = 4"):
        SparseConv2d(m, kernel_size=2)
    with pytest.raises(KernelArgumentError, match="4 output channels, which should be a multiple of groups = 3"):
        SparseConv2d(m, kernel_size=3, groups=3)
    with pytest.raises(KernelArgumentError, match="stride 0 should be an int >= 1"):
        SparseConv2d(m, kernel_size=3, stride=0)
    with pytest.raises(KernelArgumentError, match=r"padding \(1, 2, 3\)"):
        SparseConv2d(m, kernel_size=3, padding=(1, 2, 3))


def test_output_size_and_empty_batch(rng):
    conv = SparseConv2d(CSR.from_dense(random_sparse(rng, (4, 18), 0.5)), kernel_size=3, stride=2, padding=1)
    assert conv.output_size(7, 8) == (4, 4)
    assert conv(np.ones((0, 2, 7, 8), np.float32)).shape == (0, 4, 4, 4)


@pytest.mark.parametrize("wo", [1, 7, 8, 9, 16, 17, 33, 40])
@pytest.mark.parametrize("k, padding, dilation", [(1, 0, 1), (3, 1, 1), (3, 2, 2), ((1, 3), (0, 1), 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_stride_one_direct_path_every_output_width(rng, path, wo, k, padding, dilation, batch):
    # Output widths around the 8/16/32-column steps, so the last step of each row is
    # partial (its extra columns read the zero margin of the padded input and are dropped).
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    w = wo - 2 * pw + dilation * (kw - 1)
    h = 5 - 2 * ph + dilation * (kh - 1)
    _check(rng, batch, 6, h, w, 5, (kh, kw), 1, (ph, pw), dilation, groups=1, density=0.4,
           activation="relu")


def test_stride_one_direct_path_with_groups_and_nan_margin(rng):
    # Grouped direct conv; a NaN in the input must reach exactly the outputs whose
    # receptive field (through a nonzero tap) contains it, as in torch.
    _check(rng, 2, 6, 9, 11, 9, 3, 1, 1, 1, groups=3, density=0.5)
    w4 = np.ones((2, 1, 3, 3), np.float32)
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 0, 0] = np.nan
    y = csr_conv2d(x, CSR.from_dense(w4.reshape(2, -1)), None, 3, 1, 1)
    assert np.isnan(y[0, :, :2, :2]).all() and np.isfinite(y[0, :, 2:, :]).all() and np.isfinite(y[0, :, :, 2:]).all()


def test_stride_one_and_phase_plane_paths_agree_on_one_weight(rng):
    # The same weight at stride 1 and through the phase planes of stride 2 (the stride-2
    # output is the stride-1 output subsampled).
    w4 = random_sparse(rng, (7, 4 * 9), 0.3).reshape(7, 4, 3, 3)
    x = rng.standard_normal((2, 4, 12, 13)).astype(np.float32)
    m = CSR.from_dense(w4.reshape(7, -1))
    full = csr_conv2d(x, m, None, 3, 1, 1)
    strided = csr_conv2d(x, m, None, 3, 2, 1)
    assert_close(strided, full[:, :, ::2, ::2])


@pytest.mark.parametrize("k, padding", [(1, 0), (3, 1)])  # the pointwise and the direct kernel
@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("width", [5, 37])  # partial steps only; whole steps and a partial one
@pytest.mark.parametrize("block", [None, 4])  # the CSR kernels, and the 4x1 block kernels
def test_clipping_activations_span_both_bounds_and_keep_nan(rng, k, padding, activation, width, block):
    # Outputs spread over about [-40, 40], so ReLU6 clips at both ends; a NaN bias makes its
    # channel NaN, which the clip leaves NaN, as ONNX Runtime's Relu and Clip do.
    c, out, h = 6, 20, 9
    w4 = (random_sparse(rng, (out, c * k * k), 0.5) * 8).reshape(out, c, k, k)
    b = rng.standard_normal(out).astype(np.float32)
    b[3] = np.nan
    x = rng.standard_normal((1, c, h, width)).astype(np.float32)
    if block:
        w4 *= np.repeat(rng.random((out // block, 1, 1, 1)) < 0.7, block, axis=0)  # whole 4x1 blocks
        weight = BSR.from_dense(w4.reshape(out, -1), (block, 1))
    else:
        weight = CSR.from_dense(w4.reshape(out, -1))
    conv = SparseConv2d(weight, b, k, 1, padding, 1, 1, activation)
    assert conv.describe_layout().startswith("BSR" if block else "CSR")
    y = conv(x)
    ref = _reference(x, w4, b, 1, padding, 1, 1, activation)
    assert np.array_equal(np.isnan(y), np.isnan(ref)) and np.isnan(ref).any()
    finite = ~np.isnan(ref)
    assert_close(y[finite], ref[finite])
    if activation == "relu6":
        assert (ref[finite] == 6).any() and (ref[finite] == 0).any()


@pytest.mark.parametrize("positions", [(7, 7), (14, 14), (3, 5), (1, 1)])
def test_pointwise_tail_reads_past_channels_without_storing_them(rng, positions):
    # The last partial step reads whole steps on past each channel and past the input's end:
    # into NaN here (an input that is a view with NaN after it, and a conv output whose slack
    # is arbitrary), which must never reach a stored output.
    h, w = positions
    c, out = 24, 10
    w2 = random_sparse(rng, (out, c), 0.5)
    b = rng.standard_normal(out).astype(np.float32)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    buf = np.full(x.size + 4096, np.nan, np.float32)
    in_nan = buf[:x.size].reshape(x.shape)
    in_nan[...] = x
    assert readable_after(in_nan) == 4096 * 4 and readable_after(x) == 0
    conv = SparseConv2d(CSR.from_dense(w2), b, activation="relu6")
    expect = _reference(x, w2.reshape(out, c, 1, 1), b, 1, 0, 1, 1, "relu6")
    for inp in (x, in_nan, x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)):  # none, slack, copied
        y = conv(inp)
        assert readable_after(y) >= POINTWISE_SLACK * 4
        assert_close(y, expect)
    # A conv's output (slack of arbitrary values after it) read by the next 1x1 conv in place.
    first = SparseConv2d(CSR.from_dense(np.eye(c, dtype=np.float32)))
    assert_close(conv(first(x)), expect)


@pytest.mark.parametrize("k, stride, padding", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1)])
def test_every_step_width_gives_the_same_outputs_bit_for_bit(rng, k, stride, padding):
    w = random_sparse(rng, (12, 6 * k * k), 0.4)
    conv = SparseConv2d(CSR.from_dense(w), rng.standard_normal(12).astype(np.float32), k, stride, padding,
                        activation="relu")
    x = rng.standard_normal((2, 6, 13, 37)).astype(np.float32)
    rule = conv.step_width(13, 37)
    assert rule in conv.step_widths()
    want = conv(x)
    for width in conv.step_widths():
        conv.set_step_width(13, 37, width)
        assert conv.step_width(13, 37) == width and conv.step_width(13, 36) == conv.step_width(13, 36)
        np.testing.assert_array_equal(conv(x), want)  # each output's sum runs in one order
    conv.set_step_width(13, 37, None)
    assert conv.step_width(13, 37) == rule
    with pytest.raises(KernelArgumentError, match="step width 12 should be one of"):
        conv.set_step_width(13, 37, 12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int16, np.bool_, np.complex64])
def test_readable_after_counts_the_bytes_left_in_the_owning_buffer(dtype):
    owner = np.zeros(40, dtype)
    size = owner.itemsize
    assert readable_after(owner[3:10]) == 30 * size
    assert readable_after(owner[:40]) == 0
    assert readable_after(owner[:24].reshape(2, 3, 4)) == 16 * size
    assert readable_after(owner.reshape(5, 8)[:, :4]) == 0  # not contiguous
    assert readable_after(owner) == 0  # owns its memory: no base
    assert readable_after(owner[:10].view(np.uint8)) == 30 * size  # another dtype over the same buffer
    chained = np.frombuffer(owner.tobytes(), dtype)[:5]  # its base is not an ndarray
    assert readable_after(chained) == 0


def test_step_widths_timed_per_variant_and_the_rule_keeps_to_registers():
    from sparsify.kernels.conv import _rule_widths, _step_widths, rule_widths, step_widths
    # AVX2's 16 registers hold two sets of 4 accumulators of width 8 only; 16 spills but is timed.
    assert _rule_widths("avx2") == (8,) and _step_widths("avx2") == (8, 16)
    assert _rule_widths("portable") == _step_widths("portable") == (8,)
    assert _step_widths("avx512") == _rule_widths("avx512") and 32 in _rule_widths("avx512")
    assert set(rule_widths()) <= set(step_widths())


@pytest.mark.parametrize("stride", [2, (2, 3), (3, 1)])
def test_strided_pointwise_reads_only_the_positions_it_keeps(rng, stride):
    # The subsampled input goes to scratch: positions the stride skips (NaN here) are never read,
    # the last partial step reads zeros past its end, and a second call reuses the scratch.
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    w = random_sparse(rng, (10, 7), 0.5)
    b = rng.standard_normal(10).astype(np.float32)
    conv = SparseConv2d(CSR.from_dense(w), b, 1, stride, activation="relu")
    x = rng.standard_normal((2, 7, 11, 13)).astype(np.float32)
    kept = np.zeros(x.shape, bool)
    kept[:, :, ::sh, ::sw] = True
    poisoned = np.where(kept, x, np.float32(np.nan))
    expect = _reference(x, w.reshape(10, 7, 1, 1), b, (sh, sw), 0, 1, 1, "relu")
    strided_view = np.repeat(poisoned, 2, axis=3)[:, :, :, ::2]  # not contiguous
    for width in conv.step_widths():
        conv.set_step_width(11, 13, width)
        for inp in (poisoned, strided_view, poisoned):
            y = conv(inp)
            assert np.isfinite(y).all()
            assert_close(y, expect)


def test_block_convs_have_no_step_width_to_choose(rng):
    from tests.kernels.test_conv_blocks import _block_weight
    conv = SparseConv2d(BSR.from_dense(_block_weight(rng, 8, 4, 4, 0.5), (4, 1)), None, 1)
    assert conv.step_widths() == () and conv.step_width(5, 5) is None
    with pytest.raises(KernelArgumentError, match="step width"):
        conv.set_step_width(5, 5, 16)
