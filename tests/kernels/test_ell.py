"""The sliced-ELL batch-1 layout and its permute SpMV, against the CSR and dense numpy.

Every test runs once per kernel variant (``variant`` fixture: AVX-512, AVX2, portable)
that the host can run; this host's compile target decides (an AVX-512 host runs all
three). ``tests/kernels/test_isa_targets.py`` runs them again compiled for an AVX2 and
a baseline x86-64 target.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSR, KernelArgumentError, SparseLinear, _jit, _simd, ell, isa, spmm
from tests.helpers import assert_close
from tests.kernels.conftest import random_sparse, reference_linear, serial_work_set_to

needs_permute = pytest.mark.needs_permute


@pytest.fixture(autouse=True, params=isa.VARIANTS)
def variant(request, monkeypatch):
    """Run the test with ``isa.VARIANT`` set to each variant this host can run (the
    layers' default variant and the layouts' default geometry follow it)."""
    try:
        isa.select(request.param)
    except ValueError:
        pytest.skip(f"the {request.param} kernels do not run on this host")
    if request.param == "portable" and request.node.get_closest_marker("needs_permute"):
        pytest.skip("the portable variant has no permute kernel")
    monkeypatch.setattr(isa, "VARIANT", request.param)
    return request.param


def geo():
    """The geometry of the variant under test (AVX-512's for the portable one)."""
    return ell.host_geometry() or ell.GEOMETRIES["avx512"]

SHAPES = [(1, 1), (1, 50), (50, 1), (16, 32), (17, 33), (64, 200), (37, 29), (5, 1000)]
DENSITIES = [0.0, 1e-3, 0.5, 1.0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("windows", ell.WINDOW_CHOICES)
def test_layout_holds_exactly_the_csr(rng, shape, density, windows):
    g = geo()
    w = random_sparse(rng, shape, density, empty_rows=True)
    e = ell.SlicedEll.from_csr(CSR.from_dense(w), windows)
    np.testing.assert_array_equal(e.to_dense(), w)
    c = e.compacted()
    np.testing.assert_array_equal(c.to_dense(), w)
    assert c.compact and not e.compact and c.compacted() is c
    assert e.geometry == g and c.geometry == g
    assert c.values.shape[0] == e.nnz + g.lanes and not c.values[e.nnz:].any()
    assert c.value_start.shape == e.slot_ptr.shape and c.value_start[-1] == e.nnz
    assert e.compact_nbytes == c.compact_nbytes == c.nbytes
    assert sorted(e.rows) == list(range(shape[0]))
    groups = -(-shape[0] // g.lanes)
    if g.flat:  # a window per slot, and one pair (slot range) per row group
        for layout in (e, c):
            assert layout.segments.dtype == np.uint16 and layout.segments.shape[0] == e.slots
            np.testing.assert_array_equal(layout.group_ptr, np.arange(groups + 1))
        assert c.segments is e.segments and np.all(np.diff(e.slot_ptr) >= 0)
        # the same slots, group by group, as the per-pair layout of this plan
        pairs = ell.SlicedEll.from_csr(CSR.from_dense(w), windows, g._replace(flat=False))
        np.testing.assert_array_equal(e.segments, np.repeat(pairs.segments, np.diff(pairs.slot_ptr)))
        np.testing.assert_array_equal(e.slot_ptr, pairs.slot_ptr[pairs.group_ptr])
        np.testing.assert_array_equal(e.values, pairs.values)
    else:
        assert e.segments.dtype == np.int32 and np.all(np.diff(e.slot_ptr) >= 1)
        assert e.group_ptr[-1] == e.segments.shape[0]
    columns = g.lane_columns(e.offsets)
    valid = columns >= 0
    assert valid.sum() == e.nnz == np.count_nonzero(w)
    assert np.all(columns < g.segment) and np.all(e.values[~valid] == 0)
    assert np.all(e.offsets[~valid] == _simd.PERMUTE_PADDING[g.lanes])
    np.testing.assert_array_equal(g.code_offsets(np.where(valid, columns, ell.EMPTY)), e.offsets)
    assert np.all(np.diff(e.group_ptr) >= 0)
    assert e.group_ptr.shape[0] == groups + 1 and e.group_ptr[-1] == e.slot_ptr.shape[0] - 1
    assert np.all(e.segments * g.step < max(shape[1], 1))
    if windows == "aligned":
        assert np.all(e.segments % (g.segment // g.step) == 0)
    # Every window inside the input the kernel reads. That is the input itself when its
    # width is a whole number of STEPs (SEGMENTs for aligned windows), at least a SEGMENT.
    assert np.all(e.segments * g.step + g.segment <= e.padded_columns)
    unit = g.step if windows == "overlapping" else g.segment
    widest = max(-(-shape[1] // unit) * unit, g.segment if e.slots else 0)
    assert e.padded_columns == widest if windows == "overlapping" else e.padded_columns <= widest
    if windows == "auto":
        plans = {w: ell.SlicedEll.from_csr(CSR.from_dense(w_), w) for w, w_ in
                 (("aligned", w), ("overlapping", w))}
        costs = {k: v.slots + g.pair_cost * (v.slot_ptr.shape[0] - 1) for k, v in plans.items()}
        assert e.slots + g.pair_cost * (e.slot_ptr.shape[0] - 1) == min(costs.values())


def test_overlapping_windows_pad_less_than_aligned(rng):
    # Uniform 90% sparsity: aligned windows fill about half their lanes; letting each
    # nonzero take either window over its column fills about two thirds.
    c = CSR.from_dense(random_sparse(rng, (256, 1024), 0.1))
    aligned, overlapping = (ell.SlicedEll.from_csr(c, w) for w in ("aligned", "overlapping"))
    assert aligned.fill < 0.55 and overlapping.fill > aligned.fill + 0.08
    np.testing.assert_array_equal(overlapping.to_dense(), aligned.to_dense())


def test_layout_rejects_unknown_windows():
    with pytest.raises(KernelArgumentError, match="windows 'wide' should be one of"):
        ell.SlicedEll.from_csr(CSR.from_dense(np.ones((2, 2), np.float32)), "wide")


def test_rows_are_grouped_by_length_and_fill_counts_padding():
    # Rows of 32, 1, 32, 1 ... nonzeros in one segment: sorted, the 16 long rows share a
    # group (32 slots, no padding) and the short ones another (1 slot).
    w = np.zeros((32, 32), np.float32)
    w[0::2] = 1.0
    w[1::2, 0] = 2.0
    e = ell.SlicedEll.from_csr(CSR.from_dense(w), geometry="avx512")
    assert list(e.rows[:16]) == list(range(0, 32, 2))
    assert e.slots == 33 and e.fill == pytest.approx((16 * 32 + 16) / (33 * 16))
    np.testing.assert_array_equal(e.to_dense(), w)


def test_layout_rejects_float64():
    with pytest.raises(KernelArgumentError, match="float32 only"):
        ell.SlicedEll.from_csr(CSR.from_dense(np.ones((2, 2))))


@needs_permute
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 130), density=st.sampled_from(DENSITIES + [0.1]),
       seed=st.integers(0, 2**31 - 1), activation=st.sampled_from([None, "relu", "gelu", "relu6"]),
       bias=st.booleans(), serial_work=st.sampled_from([0, float("inf")]))
def test_permute_spmv_matches_dense(rows, cols, density, seed, activation, bias, serial_work):
    rng = np.random.default_rng(seed)
    w = random_sparse(rng, (rows, cols), density, empty_rows=density > 0.5)
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    x = rng.standard_normal(cols).astype(np.float32)
    padded = SparseLinear(CSR.from_dense(w), b, activation, batch1="ell")
    compact = SparseLinear(CSR.from_dense(w), b, activation, batch1="ell_compact")
    aligned = SparseLinear(CSR.from_dense(w), b, activation, batch1="csr")
    aligned.set_batch1_layout(ell.SlicedEll.from_csr(aligned.weight, "aligned"))
    assert not padded.ell.compact and compact.ell.compact
    expect = reference_linear(x[None], w, b, activation)[0].astype(np.float32)
    with serial_work_set_to(serial_work):
        assert_close(padded(x), expect)
        assert_close(aligned(x), expect)
        # The compact form runs over aligned windows (a flat geometry: the padded form's
        # windows): the same products in the same order.
        np.testing.assert_array_equal(compact(x), (padded if geo().flat else aligned)(x))


@needs_permute
@pytest.mark.parametrize("cols", [31, 32, 64, 100])
def test_inputs_padded_or_not_and_non_contiguous(rng, cols):
    w = random_sparse(rng, (40, cols), 0.3)
    layer = SparseLinear(CSR.from_dense(w), batch1="ell")
    x2 = rng.standard_normal((cols, 2)).astype(np.float32)
    for x in (x2[:, 0], np.ascontiguousarray(x2[:, 1]), x2[:, 1][None]):
        expect = reference_linear(np.ascontiguousarray(x).reshape(1, -1), w).reshape(
            x.shape[:-1] + (40,)).astype(np.float32)
        assert_close(layer(x), expect)


@needs_permute
def test_inputs_of_whole_steps_are_read_in_place(rng):
    # 1040 columns (65 STEPs, not whole SEGMENTs) on overlapping windows: no padded
    # copy per call.
    layer = SparseLinear(CSR.from_dense(random_sparse(rng, (16, 1040), 0.1)), batch1="csr")
    layer.set_batch1_layout(ell.SlicedEll.from_csr(layer.weight, "overlapping"))
    x = rng.standard_normal(1040).astype(np.float32)
    assert layer.ell.padded_columns == 1040 and layer._ell_call._padded(x) is x


@needs_permute
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("batch1", ["ell", "ell_compact"])
def test_padding_lanes_never_read_infinities_or_nans(batch1, batch):
    # Padding lanes are left unmasked only for finite inputs; batch 4 takes the
    # four-vector pass.
    assert_padding_lanes_masked(lambda w: SparseLinear(w, batch1=batch1), batch, 40, 8)


def assert_padding_lanes_masked(make_layer, batch: int, cols: int, col: int) -> None:
    """Row 0 reads column ``col`` only, row 1 every column, so row 0's lane pads row 1's
    slots, and every column row 0 does not read holds an infinity (then also a NaN): a
    padding lane that multiplied its zero weight by its input would turn row 0 into NaN."""
    w = np.zeros((2, cols), np.float32)
    w[0, col], w[1] = 2.0, 1.0
    layer = make_layer(CSR.from_dense(w))
    x = np.ones((batch, cols), np.float32)
    x[0] = np.inf
    x[0, col] = 1.5
    y = layer(x[0] if batch == 1 else x).reshape(batch, 2)
    assert y[0, 0] == 3.0 and y[0, 1] == np.inf
    assert np.all(y[1:, 0] == 2.0) and np.all(y[1:, 1] == cols)
    x[0, col // 2 + 1] = np.nan
    y = layer(x[0] if batch == 1 else x).reshape(batch, 2)
    assert y[0, 0] == 3.0 and np.isnan(y[0, 1]) and np.all(y[1:, 1] == cols)


def test_all_finite_finds_every_infinity_and_nan():
    x = np.array([0.0, -0.0, 1e-45, -3.4e38, 3.4028235e38, 1.0], np.float32)
    assert _jit.all_finite(x) and _jit.all_finite(x[:0])
    for bad in (np.inf, -np.inf, np.nan, -np.nan):
        for at in (0, 3, 5):
            y = x.copy()
            y[at] = bad
            assert not _jit.all_finite(y)


@pytest.mark.parametrize("name", sorted(ell.GEOMETRIES))
def test_offset_bytes_are_coded_for_the_kernel(name):
    g = ell.GEOMETRIES[name]
    columns = np.array([*range(g.segment), ell.EMPTY], np.uint8)
    coded = g.code_offsets(columns)
    np.testing.assert_array_equal(g.lane_columns(coded), [*range(g.segment), -1])
    assert coded[-1] == _simd.PERMUTE_PADDING[g.lanes]
    if g.lanes == 8:  # bits 0-2 index the register; bit 7, the sign, picks the register
        assert list(coded[[0, 7, 8, 9, 15]]) == [0, 7, 0x80, 0x81, 0x87]
        assert not np.any(coded[:-1] & 8)  # bit 3 marks padding alone
    else:
        np.testing.assert_array_equal(coded[:-1], columns[:-1])


@needs_permute
def test_auto_takes_the_layout_only_above_min_fill(rng):
    dense90 = random_sparse(rng, (256, 256), 0.1)
    assert SparseLinear(CSR.from_dense(dense90)).ell.fill >= geo().min_fill
    one_row = random_sparse(rng, (1, 300), 0.5)  # one lane of 16: fill <= 1/16
    assert SparseLinear(CSR.from_dense(one_row)).ell is None
    assert SparseLinear(CSR.from_dense(one_row), batch1="ell").ell is not None
    assert SparseLinear(CSR.from_dense(dense90), batch1="csr").ell is None
    assert SparseLinear(CSR.from_dense(dense90), batch1="csr").describe_batch1() == f"batch 1: CSR ({isa.VARIANT})"
    assert SparseLinear(CSR.from_dense(dense90), batch1="ell_compact").describe_batch1().startswith(
        f"batch 1: sliced ELL {geo().label} ({geo().lanes} lanes), compact, fill 0.")
    assert SparseLinear(CSR.from_dense(dense90.astype(np.float64))).ell is None


def test_batch1_argument_is_checked(rng):
    w = CSR.from_dense(random_sparse(rng, (4, 4), 0.5))
    with pytest.raises(KernelArgumentError, match="batch1 'fast' should be one of"):
        SparseLinear(w, batch1="fast")
    other = CSR.from_dense(random_sparse(rng, (4, 5), 0.5))
    with pytest.raises(KernelArgumentError, match="does not hold this layer's weight"):
        SparseLinear(w).set_batch1_layout(ell.SlicedEll.from_csr(other))
    if ell.host_geometry() is not None:
        with pytest.raises(KernelArgumentError, match="float32 only"):
            SparseLinear(CSR.from_dense(np.ones((2, 2))), batch1="ell")
        other_variant = "avx2" if isa.VARIANT == "avx512" else "avx512"
        with pytest.raises(KernelArgumentError, match=f"is for the {other_variant} kernels"):
            SparseLinear(w).set_batch1_layout(ell.SlicedEll.from_csr(w, geometry=other_variant))
    else:
        with pytest.raises(KernelArgumentError, match="needs AVX2 or AVX-512F"):
            SparseLinear(w, batch1="ell")


@needs_permute
def test_large_layer_unit_scale_both_layouts_agree(rng):
    w = (random_sparse(rng, (1000, 2048), 0.1) / 8).astype(np.float32)
    x = rng.uniform(-1, 1, 2048).astype(np.float32)
    c = CSR.from_dense(w)
    by_ell = SparseLinear(c, batch1="ell")(x)
    by_csr = SparseLinear(c, batch1="csr")(x)
    expect = reference_linear(x[None], w)[0].astype(np.float32)
    assert_close(by_ell, expect)
    assert np.abs(by_ell - by_csr).max() <= 1e-5
    assert spmm.BATCH1_DEFAULT == "auto"


def _layers(rng, shapes):
    return [SparseLinear(CSR.from_dense(random_sparse(rng, s, 0.1)), batch1="ell") for s in shapes]


def _saving(layer):
    return 1 - layer.ell.compact_nbytes / layer.ell.nbytes


def _compact_beyond_the_budget(monkeypatch):
    """Compact layouts beyond the cache budget whatever they save, flat ones too (which
    otherwise stay padded up to ``flat_compact_budget``)."""
    monkeypatch.setattr(ell, "MIN_COMPACT_SAVING", 0.0)
    monkeypatch.setattr(ell, "flat_compact_budget", lambda: 0)


@needs_permute
def test_fit_batch1_layouts_compacts_the_largest_saving_first(rng, monkeypatch):
    # Sparser layers pad more, so their compact forms save a larger share.
    layers = [SparseLinear(CSR.from_dense(random_sparse(rng, (128, 256), d)), batch1="ell")
              for d in (0.3, 0.03, 0.1)]
    _compact_beyond_the_budget(monkeypatch)
    largest = max(layers, key=_saving)
    assert largest is layers[1]
    total = sum(k.ell.nbytes for k in layers)
    budget = total - (largest.ell.nbytes - largest.ell.compact_nbytes)  # one switch is enough
    assert spmm.fit_batch1_layouts(layers, budget=budget) == 2
    assert [k.ell.compact for k in layers] == [k is largest for k in layers]


@needs_permute
def test_fit_batch1_layouts_keeps_layouts_that_save_little_until_they_stream(rng, monkeypatch):
    layers = _layers(rng, [(64, 128), (64, 128)])
    monkeypatch.setattr(ell, "MIN_COMPACT_SAVING", max(_saving(k) for k in layers) + 0.01)
    assert spmm.fit_batch1_layouts(layers, budget=0) == 2  # beyond the cache, saving too little
    assert not any(k.ell.compact for k in layers)
    monkeypatch.setattr(ell, "stream_budget", lambda: 0)
    if geo().flat:  # streamed and prefetched, still padded until their own budget
        assert spmm.fit_batch1_layouts(layers, budget=0) == 2
        assert all(not k.ell.compact and k._ell_call.prefetch for k in layers)
        monkeypatch.setattr(ell, "flat_compact_budget", lambda: 0)
    assert spmm.fit_batch1_layouts(layers, budget=0) == 0  # streamed: fewer bytes whatever
    assert all(k.ell.compact and k._ell_call.prefetch for k in layers)


def test_worth_compacting_by_working_set_and_saving(monkeypatch):
    monkeypatch.setattr(ell, "stream_budget", lambda: 1000)
    monkeypatch.setattr(ell, "MIN_COMPACT_SAVING", 0.2)
    assert not ell.worth_compacting(100, 10, 500, budget=500)  # within the cache budget
    assert ell.worth_compacting(100, 80, 501, budget=500)  # saves 20%
    assert not ell.worth_compacting(100, 81, 1000, budget=500)  # saves 19%, not streamed
    assert ell.worth_compacting(100, 99, 1001, budget=500)  # streamed
    # Flat layouts stay padded up to their own budget, whatever they save.
    monkeypatch.setattr(ell, "flat_compact_budget", lambda: 1500)
    assert not ell.worth_compacting(100, 10, 1500, budget=500, flat=True)
    assert ell.worth_compacting(100, 99, 1501, budget=500, flat=True)
    assert not ell.worth_compacting(100, 10, 1501, budget=2000, flat=True)  # within the cache budget
    monkeypatch.setattr(ell, "cache_budget", lambda: 2000)
    assert not ell.worth_compacting(100, 10, 1500)  # the default budget


@needs_permute
def test_fit_batch1_layouts_compacts_every_layout_when_they_overflow(rng, monkeypatch):
    _compact_beyond_the_budget(monkeypatch)
    layers = _layers(rng, [(64, 128), (64, 128)])
    x = rng.standard_normal(128).astype(np.float32)
    before = [k(x) for k in layers]
    assert spmm.fit_batch1_layouts(layers, budget=layers[0].weight.nbytes) == 0
    # Aligned windows where the geometry compacts over them, else the windows the layers had.
    assert all(k.ell.compact and (k.ell.aligned or k.ell.geometry.compact_windows == "auto") for k in layers)
    for k, y in zip(layers, before):
        assert_close(k(x), y)
    assert spmm.fit_batch1_layouts(layers, budget=1 << 40) == 0  # compact ones stay compact


@needs_permute
def test_auto_compacts_a_layout_beyond_the_cache_budget(rng, monkeypatch):
    w = CSR.from_dense(random_sparse(rng, (256, 256), 0.1))
    assert SparseLinear(w).ell is not None
    monkeypatch.setattr(ell, "cache_budget", lambda: 1000)
    _compact_beyond_the_budget(monkeypatch)
    assert SparseLinear(w).ell.compact
    assert not SparseLinear(w, batch1="ell").ell.compact  # asked for explicitly


def test_cache_sizes_are_read_or_defaulted(monkeypatch, tmp_path):
    assert ell.cache_bytes(2, 123) > 0
    fake = tmp_path / "cache"
    for i, (level, size) in enumerate([(1, "32K"), (3, "16384K"), (2, "2M")]):
        d = fake / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    real_path = ell.Path
    monkeypatch.setattr(ell, "Path", lambda p: fake if "cache" in str(p) else real_path(p))
    assert ell.cache_bytes(3, 0) == 16 << 20 and ell.cache_bytes(2, 0) == 2 << 20
    assert ell.cache_budget() == int((16 << 20) * ell.CACHE_SHARE)
    assert ell.stream_budget() == int((16 << 20) * ell.STREAM_SHARE)
    monkeypatch.setattr(ell, "Path", lambda p: tmp_path / "missing")
    assert ell.cache_bytes(2, 123) == 123


@needs_permute
@pytest.mark.parametrize("batch1", ["ell", "ell_compact"])
@pytest.mark.parametrize("cols", [29, 64])
@pytest.mark.parametrize("batch", [2, 4, 5, 8, 9])
def test_small_batches_on_the_permute_kernel_match_dense(rng, monkeypatch, batch1, cols, batch, path):
    # Every batch here through the sliced-ELL kernels: whole 4-row passes, then single rows.
    monkeypatch.setattr(spmm, "ELL_ROWS_MAX_BATCH", 16)
    w = random_sparse(rng, (45, cols), 0.3, empty_rows=True)
    b = rng.standard_normal(45).astype(np.float32)
    layer = SparseLinear(CSR.from_dense(w), b, "gelu", batch1=batch1)
    big = rng.standard_normal((batch, 2 * cols)).astype(np.float32)
    for x in (np.ascontiguousarray(big[:, :cols]), big[:, ::2]):  # contiguous or not
        expect = reference_linear(x, w, b, "gelu").astype(np.float32)
        assert_close(layer(x), expect)
        out = np.full((batch, 45), np.nan, np.float32)
        layer(x, out)
        assert_close(out, expect)


@needs_permute
@pytest.mark.parametrize("batch1", ["ell", "ell_compact"])
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_prefetching_changes_no_result(rng, batch1, batch):
    # Prefetches only read ahead (also past the arrays' ends): same products, same order.
    w = random_sparse(rng, (70, 300), 0.2)
    layer = SparseLinear(CSR.from_dense(w), rng.standard_normal(70).astype(np.float32), "relu", batch1=batch1)
    x = rng.standard_normal((batch, 300)).astype(np.float32)
    layer.set_batch1_layout(layer.ell, prefetch=False)
    plain = layer(x)
    layer.set_batch1_layout(layer.ell, prefetch=True)
    assert layer._ell_call.prefetch > 0 and layer.describe_batch1().endswith(", prefetched")
    np.testing.assert_array_equal(layer(x), plain)
    assert_close(plain, reference_linear(x, w, layer.bias, "relu").astype(np.float32))


@needs_permute
def test_layouts_beyond_the_stream_budget_are_prefetched(rng, monkeypatch):
    layers = _layers(rng, [(64, 128), (64, 128)])
    assert not any(k._ell_call.prefetch for k in layers)  # small: the default budget is megabytes
    one = spmm.compact_layout(layers[0].weight).nbytes
    monkeypatch.setattr(ell, "stream_budget", lambda: one)  # one layer fits, two do not
    assert SparseLinear(layers[0].weight, batch1="ell_compact")._ell_call.prefetch == 0
    _compact_beyond_the_budget(monkeypatch)
    spmm.fit_batch1_layouts(layers, budget=0)
    assert all(k.ell.compact and k._ell_call.prefetch for k in layers)
    spmm.fit_batch1_layouts(layers[:1], budget=0)  # alone, it fits again
    assert layers[0]._ell_call.prefetch == 0 and layers[1]._ell_call.prefetch


@needs_permute
@pytest.mark.parametrize("windows", ["aligned", "overlapping"])
@pytest.mark.parametrize("compact", [False, True])
def test_each_window_plan_runs_every_ell_batch(rng, windows, compact):
    # Both plans through the 1-row and 4-row kernels (batches 1-4; 5 takes the SpMM).
    w = random_sparse(rng, (50, 200), 0.3)
    layer = SparseLinear(CSR.from_dense(w), rng.standard_normal(50).astype(np.float32), "gelu", batch1="csr")
    layout = ell.SlicedEll.from_csr(layer.weight, windows)
    layer.set_batch1_layout(layout.compacted() if compact else layout)
    assert layer.ell.aligned == (windows == "aligned")
    for batch in range(1, 6):
        x = rng.standard_normal((batch, 200)).astype(np.float32)
        assert_close(layer(x), reference_linear(x, w, layer.bias, "gelu").astype(np.float32))


@needs_permute
def test_compact_layout_reuses_an_aligned_layout_and_replans_an_overlapping_one(rng):
    # A flat geometry reuses either: its compact form keeps the padded form's windows.
    c = CSR.from_dense(random_sparse(rng, (64, 256), 0.3))
    aligned, overlapping = (ell.SlicedEll.from_csr(c, w) for w in ("aligned", "overlapping"))
    assert aligned.aligned and not overlapping.aligned
    reused = spmm.compact_layout(c, aligned)
    assert reused.offsets is aligned.offsets  # compacted, not planned again
    replanned = spmm.compact_layout(c, overlapping)
    assert replanned.compact
    if geo().flat:
        assert replanned.offsets is overlapping.offsets
        best = ell.SlicedEll.from_csr(c)
        np.testing.assert_array_equal(spmm.compact_layout(c).values, best.compacted().values)
        assert spmm.compact_layout(c).slots == best.slots == overlapping.slots
    else:
        assert replanned.aligned
        for layout in (reused, replanned, spmm.compact_layout(c)):
            np.testing.assert_array_equal(layout.values, spmm.compact_layout(c).values)


@needs_permute
@pytest.mark.parametrize("lead", [(), (1,), (1, 1)])
def test_batch1_fast_path_matches_the_checked_path(rng, lead):
    w = random_sparse(rng, (40, 64), 0.2)
    layer = SparseLinear(CSR.from_dense(w), rng.standard_normal(40).astype(np.float32), "relu", batch1="ell")
    assert layer._ell_call.in_place
    x = rng.standard_normal(lead + (64,)).astype(np.float32)
    y = layer(x)
    assert y.shape == lead + (40,) and y.flags.c_contiguous
    checked = np.empty(lead + (40,), np.float32)
    np.testing.assert_array_equal(y, layer(x, checked))  # out= takes the checked path
    assert_close(y.reshape(-1), reference_linear(x.reshape(1, 64), w, layer.bias, "relu")[0].astype(np.float32))
    strided = np.zeros(lead + (128,), np.float32)[..., ::2]
    strided[...] = x
    np.testing.assert_array_equal(layer(strided), y)  # not contiguous: copied, same result
    with pytest.raises(KernelArgumentError, match="dtype float64"):
        layer(x.astype(np.float64))


@pytest.mark.parametrize("shape, density", [((50, 200), 0.3), ((33, 40), 0.02), ((16, 32), 1.0), ((7, 9), 0.0)])
def test_window_plans_count_the_bytes_of_the_layouts_they_build(rng, shape, density):
    w = CSR.from_dense(random_sparse(rng, shape, density))
    for choice, plan in ell.SlicedEll.plans(w).items():
        layout = ell.SlicedEll.from_plan(plan)
        assert layout.aligned or choice == "overlapping"
        assert (plan.nbytes, plan.compact_nbytes, plan.slots) == (layout.nbytes, layout.compacted().nbytes, layout.slots)
        assert plan.fill == layout.fill
    with pytest.raises(KernelArgumentError, match="windows 'wide'"):
        ell.SlicedEll.plans(w, ("wide",))


@needs_permute
@pytest.mark.parametrize("windows", ["aligned", "overlapping"])
def test_compact_form_sizes_the_layout_it_builds(rng, windows):
    # An overlapping layout's own compact_nbytes misjudges the aligned compact form that
    # per-pair geometries build; flat ones compact the layout as it is.
    c = CSR.from_dense(random_sparse(rng, (96, 512), 0.1))
    built = ell.SlicedEll.from_csr(c, windows)
    nbytes, build = spmm.compact_form(c, built)
    layout = build()
    assert layout.compact and layout.nbytes == nbytes
    assert layout.aligned == (windows == "aligned" or not geo().flat)
    assert (built.compact_nbytes == nbytes) == (windows == "aligned" or geo().flat)


@needs_permute
def test_fit_batch1_layouts_counts_the_compact_bytes_it_builds(rng, monkeypatch):
    # Overlapping layouts: the working set left must be what the switched layers take.
    layers = []
    for _ in range(3):
        layer = SparseLinear(CSR.from_dense(random_sparse(rng, (96, 512), 0.1)), batch1="csr")
        layer.set_batch1_layout(ell.SlicedEll.from_csr(layer.weight, "overlapping"))
        layers.append(layer)
    _compact_beyond_the_budget(monkeypatch)
    seen = []
    real = ell.worth_compacting
    monkeypatch.setattr(ell, "worth_compacting", lambda p, c, total, *rest: seen.append(total) or real(p, c, total, *rest))
    total = sum(k.ell.nbytes for k in layers)
    assert spmm.fit_batch1_layouts(layers, budget=total - 1) == 2
    switched = [k for k in layers if k.ell.compact]
    assert len(switched) == 1 and switched[0].ell.aligned != geo().flat
    assert seen[1] == sum(k.ell.nbytes for k in layers)  # the total after the switch, exactly



@needs_permute
def test_flat_layouts_index_windows_beyond_uint16(rng):
    # 600k columns over 8-column steps: 75k windows, past uint16's range.
    if not geo().flat:
        pytest.skip("per-pair geometry: no per-slot windows")
    cols = 600_000
    w = np.zeros((3, cols), np.float32)
    for r, at in enumerate(([5, 70_000, 599_999], [524_300, 524_301], [])):
        w[r, at] = rng.standard_normal(len(at)).astype(np.float32)
    layer = SparseLinear(CSR.from_dense(w), batch1="ell")
    assert layer.ell.segments.dtype == np.int32 and int(layer.ell.segments.max()) > 65_535
    x = rng.standard_normal(cols).astype(np.float32)
    assert_close(layer(x), reference_linear(x[None], w)[0].astype(np.float32))


# The AVX-512 kernels also read 64-column windows (four table registers, two permutes and
# a blend per slot): every test below runs each AVX-512 geometry, on the AVX-512 variant.
needs_avx512 = pytest.mark.skipif("avx512" not in isa.VARIANTS, reason="the AVX-512 kernels do not run here")
WIDE = ell.GEOMETRIES["avx512_w64"]


def _on_avx512():
    """Skip unless the variant under test (the autouse ``variant`` fixture) is AVX-512."""
    if isa.VARIANT != "avx512":
        pytest.skip("the 64-column windows are AVX-512's")


@needs_avx512
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("windows", ["aligned", "overlapping"])
def test_wide_windows_hold_exactly_the_csr(rng, shape, density, windows):
    _on_avx512()
    w = random_sparse(rng, shape, density, empty_rows=True)
    e = ell.SlicedEll.from_csr(CSR.from_dense(w), windows, WIDE)
    for layout in (e, e.compacted()):
        np.testing.assert_array_equal(layout.to_dense(), w)
        assert layout.geometry == WIDE
    columns = WIDE.lane_columns(e.offsets)
    assert (columns >= 0).sum() == np.count_nonzero(w) and np.all(columns < 64)
    assert np.all(e.offsets[columns < 0] == _simd.PERMUTE_PADDING[16])
    assert np.all(e.segments * WIDE.step + 64 <= e.padded_columns)
    if windows == "aligned":
        assert np.all(e.segments % 2 == 0)


@needs_avx512
@needs_permute
@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 200), density=st.sampled_from(DENSITIES + [0.1]),
       seed=st.integers(0, 2**31 - 1), windows=st.sampled_from(["aligned", "overlapping"]),
       compact=st.booleans(), batch=st.integers(1, 5), serial_work=st.sampled_from([0, float("inf")]))
def test_wide_window_spmv_matches_dense(rows, cols, density, seed, windows, compact, batch, serial_work):
    # Batches 1-4 run the sliced ELL (one row, or four in one pass), 5 the SpMM.
    _on_avx512()
    rng = np.random.default_rng(seed)
    w = random_sparse(rng, (rows, cols), density, empty_rows=density > 0.5)
    b = rng.standard_normal(rows).astype(np.float32)
    layer = SparseLinear(CSR.from_dense(w), b, "relu", batch1="csr")
    layout = ell.SlicedEll.from_csr(layer.weight, windows, WIDE)
    layer.set_batch1_layout(layout.compacted() if compact else layout)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    with serial_work_set_to(serial_work):
        assert_close(layer(x), reference_linear(x, w, b, "relu").astype(np.float32))
        if batch == 1:
            assert_close(layer(x[0]), reference_linear(x, w, b, "relu")[0].astype(np.float32))


@needs_avx512
@needs_permute
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("compact", [False, True])
def test_wide_window_padding_lanes_never_read_infinities_or_nans(batch, compact):
    # Row 0's column in the upper half of a 64-column window: bit 5 of its offset picks
    # the second permute.
    _on_avx512()

    def make_layer(w):
        layer = SparseLinear(w, batch1="csr")
        layout = ell.SlicedEll.from_csr(layer.weight, "aligned", WIDE)
        layer.set_batch1_layout(layout.compacted() if compact else layout)
        return layer

    assert_padding_lanes_masked(make_layer, batch, 80, 40)


@needs_avx512
def test_auto_takes_the_cheapest_plan_of_every_geometry(rng):
    # Uniform 90%: 64-column windows every 32 columns pad least (fill ~0.75 against
    # ~0.5 and ~0.64), and their plan costs least even at WIDE_SLOT_COST per slot.
    _on_avx512()
    w = CSR.from_dense(random_sparse(rng, (256, 512), 0.1))
    layer = SparseLinear(w, batch1="ell")
    costs = {(g.segment, k): p.cost for g in ell.variant_geometries("avx512")
             for k, p in ell.SlicedEll.plans(w, geometry=g).items()}
    assert layer.ell.geometry == WIDE and not layer.ell.aligned
    assert min(costs, key=costs.get) == (64, "overlapping")
    assert layer.describe_batch1().startswith("batch 1: sliced ELL avx512/64 (16 lanes), padded")
    assert ell.variant_geometries("avx2") == (ell.GEOMETRIES["avx2"],) and ell.variant_geometries("portable") == ()


@needs_avx512
def test_wide_windows_compact_over_their_own_windows(rng):
    # 64-column windows keep an overlapping plan's windows when compacted (as many pairs
    # as aligned 32-column windows); 32-column ones replan aligned.
    _on_avx512()
    c = CSR.from_dense(random_sparse(rng, (64, 256), 0.3))
    assert WIDE.compact_windows == "auto" and ell.GEOMETRIES["avx512"].compact_windows == "aligned"
    overlapping = ell.SlicedEll.from_csr(c, "overlapping", WIDE)
    compact = spmm.compact_layout(c, overlapping)
    assert compact.compact and compact.offsets is overlapping.offsets
    np.testing.assert_array_equal(compact.to_dense(), c.to_dense())
