"""SparseLinear / csr_linear against a float64 dense reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsify.kernels import CSR, CSRFormatError, KernelArgumentError, SparseLinear, csr_linear
from sparsify.kernels import _jit, spmm
from sparsify.kernels.spmm import RowChunks, pick_tile
from tests.helpers import assert_close
from tests.kernels.conftest import random_sparse, reference_linear, serial_work_set_to, take_layout_at_any_fill

ACTS = [None, "relu", "gelu", "relu6"]


@pytest.fixture(autouse=True, params=["csr", "ell", "ell_compact", "ell-avx2", "ell_compact-avx2"])
def batch1_layout(request, monkeypatch):
    """Run every test here with batch-1 calls on the CSR kernel, then on the padded and on
    the compact sliced-ELL one of the host's variant and of the AVX2 variant where the
    host runs it (float64 layers stay on CSR: the layout is float32 only)."""
    from sparsify.kernels import ell, isa, spmm
    layout, _, variant = request.param.partition("-")
    if variant:
        if isa.VARIANT == variant:
            pytest.skip("the host's own variant: covered by the runs without a suffix")
        try:
            isa.select(variant)
        except ValueError:
            pytest.skip(f"the {variant} kernels do not run on this host")
        monkeypatch.setattr(isa, "VARIANT", variant)
    if layout == "csr":
        monkeypatch.setattr(spmm, "BATCH1_DEFAULT", "csr")
        return request.param
    if ell.host_geometry() is None:
        pytest.skip("the sliced-ELL SpMV needs AVX2 or AVX-512F")
    monkeypatch.setattr(spmm, "BATCH1_DEFAULT", "auto")
    take_layout_at_any_fill(monkeypatch)  # "auto" then takes the layout at any fill,
    if layout == "ell_compact":  # and in its compact form when nothing fits the cache
        monkeypatch.setattr(ell, "cache_budget", lambda: 0)
        monkeypatch.setattr(ell, "MIN_COMPACT_SAVING", 0.0)
    return request.param


def _check(rng, shape, density, batch, dtype, bias, activation, empty_rows=False):
    w = random_sparse(rng, shape, density, dtype, empty_rows=empty_rows)
    b = rng.standard_normal(shape[0]).astype(dtype) if bias else None
    x = rng.standard_normal((batch, shape[1])).astype(dtype)
    y = csr_linear(x, CSR.from_dense(w), b, activation)
    assert_close(y, reference_linear(x, w, b, activation).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 8, 17, 70])
def test_matches_dense(rng, path, dtype, activation, bias, batch):
    _check(rng, (37, 29), 0.3, batch, dtype, bias, activation, empty_rows=True)


@pytest.mark.parametrize("shape", [(1, 50), (50, 1), (1, 1), (64, 200)])
@pytest.mark.parametrize("density", [0.0, 1e-3, 0.5, 1.0])
@pytest.mark.parametrize("batch", [1, 9])
def test_shapes_and_densities(rng, path, shape, density, batch):
    _check(rng, shape, density, batch, np.float32, True, None)


def test_large_layer_unit_scale_fp32(rng):
    # 1024 inputs, dense rows: fp32 accumulation must stay within 1e-5 of float64.
    w = (random_sparse(rng, (256, 1024), 0.5) / 32).astype(np.float32)
    x = rng.uniform(-1, 1, (33, 1024)).astype(np.float32)
    layer = SparseLinear(CSR.from_dense(w))
    assert_close(layer(x), reference_linear(x, w).astype(np.float32))
    assert_close(layer(x[:1]), reference_linear(x[:1], w).astype(np.float32))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), batch=st.integers(1, 40),
       density=st.sampled_from([0.0, 0.05, 0.5, 1.0]), seed=st.integers(0, 2**31 - 1),
       activation=st.sampled_from(ACTS), dtype=st.sampled_from([np.float32, np.float64]),
       serial_work=st.sampled_from([0, float("inf")]))
def test_property_matches_dense(rows, cols, batch, density, seed, activation, dtype, serial_work):
    with serial_work_set_to(serial_work):
        _check(np.random.default_rng(seed), (rows, cols), density, batch, dtype, True, activation)


def test_leading_dims_and_1d_input(rng):
    w = random_sparse(rng, (11, 13), 0.4)
    layer = SparseLinear(CSR.from_dense(w), activation="relu")
    x = rng.standard_normal((2, 3, 13)).astype(np.float32)
    assert_close(layer(x), reference_linear(x.reshape(6, 13), w, None, "relu")
                 .astype(np.float32).reshape(2, 3, 11))
    v = x[0, 0]
    assert_close(layer(v), reference_linear(v[None], w, None, "relu").astype(np.float32)[0])


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_non_contiguous_input(rng, batch):
    w = random_sparse(rng, (12, 10), 0.5)
    big = rng.standard_normal((batch, 20)).astype(np.float32)
    x = big[:, ::2]
    assert not x.flags.c_contiguous
    assert_close(csr_linear(x, CSR.from_dense(w)), reference_linear(x, w).astype(np.float32))
    xf = np.asfortranarray(rng.standard_normal((batch, 10)).astype(np.float32))
    assert_close(csr_linear(xf, CSR.from_dense(w)), reference_linear(xf, w).astype(np.float32))


def test_out_argument(rng):
    w = random_sparse(rng, (12, 10), 0.5)
    layer = SparseLinear(CSR.from_dense(w))
    x = rng.standard_normal((4, 10)).astype(np.float32)
    out = np.full((4, 12), np.nan, np.float32)
    res = layer(x, out=out)
    assert res is out
    assert_close(out, reference_linear(x, w).astype(np.float32))
    with pytest.raises(KernelArgumentError, match=r"out should be .* shape \(4, 12\), got .*shape \(4, 11\)"):
        layer(x, out=np.empty((4, 11), np.float32))
    with pytest.raises(KernelArgumentError, match="non-contiguous"):
        layer(x, out=np.empty((12, 4), np.float32).T)


def test_zero_batch_and_empty_shapes(rng):
    w = random_sparse(rng, (6, 5), 0.5)
    layer = SparseLinear(CSR.from_dense(w))
    assert layer(np.empty((0, 5), np.float32)).shape == (0, 6)
    empty_in = SparseLinear(CSR.from_dense(np.zeros((4, 0), np.float32)),
                            bias=np.arange(4, dtype=np.float32), activation="relu")
    assert_close(empty_in(np.empty((3, 0), np.float32)), np.tile(np.arange(4, dtype=np.float32), (3, 1)))
    no_out = SparseLinear(CSR.from_dense(np.zeros((0, 5), np.float32)))
    assert no_out(np.ones((2, 5), np.float32)).shape == (2, 0)


def test_nan_propagates(rng):
    w = random_sparse(rng, (6, 5), 1.0)
    x = np.ones((3, 5), np.float32)
    x[1, 2] = np.nan
    for act in ACTS:
        y = csr_linear(x, CSR.from_dense(w), activation=act)
        assert np.isnan(y[1]).all() and not np.isnan(y[[0, 2]]).any()
        y1 = csr_linear(x[1], CSR.from_dense(w), activation=act)
        assert np.isnan(y1).all()


@pytest.mark.parametrize("batch", [1, 4])
def test_activations_at_infinities(path, batch):
    w = CSR.from_dense(np.ones((1, 1), np.float32))
    x = np.full((batch, 1), -np.inf, np.float32)
    with np.errstate(invalid="ignore"):  # the closeness helper subtracts inf from inf
        assert_close(csr_linear(x, w, activation="relu"), np.zeros((batch, 1), np.float32))
        assert_close(csr_linear(-x, w, activation="relu"), -x)
        assert_close(csr_linear(-x, w, activation="gelu"), -x)


def test_rejects_wrong_dtypes_and_shapes(rng):
    w = CSR.from_dense(random_sparse(rng, (6, 5), 0.5))
    layer = SparseLinear(w)
    with pytest.raises(KernelArgumentError, match="input dtype float64 should be float32"):
        layer(np.ones((2, 5)))
    with pytest.raises(KernelArgumentError, match="input dtype int64 should be float32"):
        layer(np.ones((2, 5), np.int64))
    with pytest.raises(KernelArgumentError, match=r"input shape \(2, 4\) should end in 5"):
        layer(np.ones((2, 4), np.float32))
    with pytest.raises(KernelArgumentError, match="input should be a numpy array"):
        layer([[1.0] * 5])
    with pytest.raises(KernelArgumentError, match="bias dtype float64 should be float32"):
        SparseLinear(w, bias=np.ones(6))
    with pytest.raises(KernelArgumentError, match=r"bias shape \(5,\) should be \(6,\)"):
        SparseLinear(w, bias=np.ones(5, np.float32))
    with pytest.raises(KernelArgumentError, match="activation 'tanh' should be one of"):
        SparseLinear(w, activation="tanh")
    with pytest.raises(KernelArgumentError, match="weight should be a kernels.CSR"):
        SparseLinear(np.eye(3, dtype=np.float32))


def test_unchecked_csr_is_fully_checked_before_use():
    bad = CSR(np.ones(2, np.float32), np.array([0, 7], np.int32), np.array([0, 1, 2], np.int32), (2, 3))
    with pytest.raises(CSRFormatError, match=r"column index 7 .* should be in \[0, 3\)"):
        SparseLinear(bad)
    good = CSR(np.ones(2, np.float32), np.array([0, 2], np.int32), np.array([0, 1, 2], np.int32), (2, 3))
    SparseLinear(good)
    assert good.fully_checked


@pytest.mark.parametrize("index_dtype", [np.int16, np.int32, np.int64])
@pytest.mark.parametrize("batch", [1, 9])
def test_index_dtypes(rng, path, index_dtype, batch):
    w = random_sparse(rng, (9, 7), 0.5)
    m = CSR.from_dense(w, index_dtype=index_dtype)
    assert m.indices.dtype == index_dtype
    x = rng.standard_normal((batch, 7)).astype(np.float32)
    assert_close(csr_linear(x, m, activation="gelu"), reference_linear(x, w, None, "gelu").astype(np.float32))


def test_row_chunks_cover_rows_in_order():
    indptr = np.array([0, 100, 100, 100, 101, 300, 300], np.int64)
    for n in (1, 2, 3, 8, 50):
        b = RowChunks(indptr).bounds(n)
        assert b[0] == 0 and b[-1] == 6
        assert (np.diff(b) > 0).all()
        assert len(b) - 1 <= n
    # Balanced by cost (nnz + 2 per row): no chunk exceeds an equal share plus one row.
    cost = indptr + 2 * np.arange(7)
    for n in (2, 3):
        b = RowChunks(indptr).bounds(n)
        per_chunk = cost[b[1:]] - cost[b[:-1]]
        assert per_chunk.max() <= cost[-1] / n + np.diff(cost).max()
    assert RowChunks(indptr).bounds(2).tolist() == [0, 4, 6]
    assert RowChunks(np.zeros(1, np.int64)).bounds(4).tolist() == [0, 0]


def test_pick_tile():
    assert [pick_tile(b) for b in (2, 8, 9, 16, 17, 65, 1000)] == [8, 8, 16, 16, 32, 32, 32]
    assert [pick_tile(b, 16) for b in (2, 9, 17, 1000)] == [8, 16, 16, 16]
    from sparsify.kernels.spmm import widest_tile
    assert [widest_tile(v) for v in ("avx512", "avx2", "portable")] == [32, 16, 8]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int16, np.int32, np.int64])
@pytest.mark.parametrize("batch", [1, 8, 16, 33])
def test_every_row_length_through_the_vector_tails(rng, path, dtype, index_dtype, batch):
    # Row r holds r nonzeros (0..40): every remainder of the 16/8-lane masked gather
    # chunks (batch 1) and of the four accumulator chains (batched tiles), with each
    # row's last chunk ending right where the next row (or the arrays) ends. Column 0 is
    # never used and x[:, 0] is NaN: a lane outside its row's mask that read x at the
    # masked-off default index would turn the output NaN.
    rows, cols = 41, 64
    w = np.zeros((rows, cols), dtype)
    for r in range(rows):
        picked = rng.choice(np.arange(1, cols), size=r, replace=False)
        w[r, picked] = rng.standard_normal(r)
    m = CSR.from_dense(w, index_dtype=index_dtype)
    assert m.data.shape == (m.nnz,)  # no slack after the last row
    b = rng.standard_normal(rows).astype(dtype)
    x = rng.standard_normal((batch, cols)).astype(dtype)
    y_ref = reference_linear(x, w, b).astype(dtype)
    x[:, 0] = np.nan
    y = csr_linear(x, m, b)
    assert np.isfinite(y).all()
    assert_close(y, y_ref)


@pytest.mark.parametrize("shape", [7, (0,), (3, 5), (2, 0, 4), (1, 2, 3, 16)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_aligned_empty_is_cache_line_aligned(shape, dtype):
    from sparsify.kernels.buffers import ALIGN, aligned_empty

    for _ in range(8):  # several allocations: malloc hands out varying offsets
        a = aligned_empty(shape, dtype)
        assert a.size == 0 or a.ctypes.data % ALIGN == 0  # (no data, no address to align)
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
        assert a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        a[...] = 1  # the whole extent is usable


def test_scratch_views_share_one_aligned_buffer_per_thread():
    import threading

    from sparsify.kernels.buffers import ALIGN, VIEWS_KEPT, Scratch

    s = Scratch()
    a = s.get((4, 8), np.float32)
    assert a.shape == (4, 8) and a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % ALIGN == 0
    assert s.get((4, 8), np.float32) is a  # the same view again
    b = s.get((3,), np.dtype(np.float64))
    assert b.shape == (3,) and b.dtype == np.float64 and b.ctypes.data == a.ctypes.data
    for n in range(2, VIEWS_KEPT + 3):  # more shapes than kept: all still right
        v = s.get((n,), np.int8)
        assert v.shape == (n,) and v.ctypes.data == a.ctypes.data
    big = s.get((1 << 16,), np.float32)  # grows: a new buffer, old views not handed out again
    assert big.shape == (1 << 16,) and big.ctypes.data % ALIGN == 0
    again = s.get((4, 8), np.float32)
    assert again is not a and again.ctypes.data == big.ctypes.data
    other = []
    t = threading.Thread(target=lambda: other.append(s.get((4, 8), np.float32)))
    t.start()
    t.join()
    assert other[0].ctypes.data != again.ctypes.data  # another thread, its own buffer


def test_packed_inputs_are_aligned_and_reused_per_thread(rng, monkeypatch):
    import threading

    from sparsify.kernels.buffers import ALIGN

    seen = []
    real = _jit.pack_rows_kernel

    def spy(x, xp):
        seen.append((threading.get_ident(), xp.__array_interface__["data"][0]))
        return real(spmm.pack_lanes())(x, xp)

    monkeypatch.setattr(_jit, "pack_rows_kernel", lambda lanes: spy)
    w = random_sparse(rng, (40, 30), 0.3)
    layer = SparseLinear(CSR.from_dense(w))
    with serial_work_set_to(0):  # the parallel kernels, which the spy stands in front of
        for batch in (40, 5, 9, 40):  # all above ELL_ROWS_MAX_BATCH: packed
            x = rng.standard_normal((batch, 30)).astype(np.float32)
            assert_close(layer(x), reference_linear(x, w).astype(np.float32))
        other = threading.Thread(target=layer, args=(np.ones((5, 30), np.float32),))
        other.start()
        other.join()
    addresses = [a for _, a in seen]
    assert all(a % ALIGN == 0 for a in addresses)
    assert len(set(addresses[:4])) == 1  # one buffer for this thread, big enough from the start
    assert seen[4][0] != seen[0][0] and addresses[4] != addresses[0]  # another thread's own


@pytest.mark.parametrize("tile", _jit.TILES)
@pytest.mark.parametrize("n_in", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("batch", [1, 31, 32, 33, 70])
@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pack_rows_writes_every_packed_value(rng, tile, n_in, batch, lanes, dtype):
    # xp starts as NaN: every value must be written, x's where b < batch and 0 beyond
    # (a column block or padded row left unwritten would stay NaN).
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    n_tiles = -(-batch // tile)
    xp = np.full((1, n_tiles, n_in, tile), np.nan, dtype)
    for kernel in (_jit.pack_rows_kernel(lanes), _jit.serial(_jit.pack_rows_kernel(lanes))):
        xp[...] = np.nan
        kernel(x, xp)
        padded = np.zeros((n_tiles * tile, n_in), dtype)
        padded[:batch] = x
        expected = padded.reshape(n_tiles, tile, n_in).transpose(0, 2, 1)[None]
        assert np.array_equal(xp, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, batch", [(1, 33), (15, 8), (17, 16), (40, 33), (33, 70)])
def test_batched_stores_stay_inside_the_output(rng, dtype, rows, batch):
    # The linear SpMM writes each batch column's run of up to 16 rows with one masked
    # vector store: the last (partial) run must not spill past the output, and every
    # output must be written (sentinel -7 before, a guard after the buffer).
    w = random_sparse(rng, (rows, 23), 0.4).astype(dtype)
    x = rng.standard_normal((batch, 23)).astype(dtype)
    buf = np.full(batch * rows + 64, -7.0, dtype)
    out = buf[: batch * rows].reshape(batch, rows)
    SparseLinear(CSR.from_dense(w))(x, out=out)
    assert_close(out, reference_linear(x, w, None).astype(dtype))
    assert (buf[batch * rows:] == -7.0).all()


@pytest.mark.parametrize("serial", [True, False])
def test_batch1_thread_choice_overrides_the_rule_at_batch_1_only(rng, monkeypatch, serial):
    w = random_sparse(rng, (40, 70), 0.2)
    layer = SparseLinear(CSR.from_dense(w))
    seen = []  # per batch-1 call: did it run the serial kernel?
    one_row = spmm._EllCall.one_row
    monkeypatch.setattr(spmm._EllCall, "one_row", lambda self, x, out, s: (seen.append(s), one_row(self, x, out, s)))
    run = SparseLinear._run
    monkeypatch.setattr(SparseLinear, "_run", lambda self, x, out, batch, n_chunks, variant: (
        seen.append(n_chunks == 1) if batch == 1 else None, run(self, x, out, batch, n_chunks, variant)))
    x = rng.standard_normal((3, 70)).astype(np.float32)
    with serial_work_set_to(0 if serial else float("inf")):  # the rule says the opposite
        layer.set_batch1_serial(serial)
        assert layer.describe_batch1().endswith(", one thread" if serial else ", all threads")
        assert_close(layer(x[0]), reference_linear(x[0], w).astype(np.float32))
        assert_close(layer(x[:1]), reference_linear(x[:1], w).astype(np.float32))
        assert_close(layer(x), reference_linear(x, w).astype(np.float32))  # batch 3: the rule
        # batch 3 on the sliced ELL runs its rows one by one, on the rule's threads
        assert seen[:2] == [serial, serial] and all(s is (not serial) for s in seen[2:]), seen
        layer.set_batch1_serial(None)
        seen.clear()
        layer(x[0])
        assert seen == [not serial] and not layer.describe_batch1().endswith("thread")
    with pytest.raises(KernelArgumentError, match="serial should be"):
        layer.set_batch1_serial(1)
