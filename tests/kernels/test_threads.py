"""Thread control and warm-up."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from sparsify.kernels import CSR, KernelArgumentError, SparseLinear, get_threads, set_threads, warmup
from sparsify.kernels import _depthwise3x3_jit, _depthwise_jit, _jit, buffers, norm
from sparsify.kernels.conv import step_widths
from sparsify.kernels.spmm import pack_lanes
from tests.helpers import assert_close
from tests.kernels.conftest import random_sparse, reference_linear


def test_set_threads_round_trip_and_results_do_not_depend_on_it(rng):
    before = get_threads()
    w = random_sparse(rng, (300, 50), 0.3)
    layer = SparseLinear(CSR.from_dense(w))
    x = rng.standard_normal((20, 50)).astype(np.float32)
    try:
        results = []
        for n in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            set_threads(n)
            assert get_threads() == n
            results.append((layer(x), layer(x[0])))
        for y, y1 in results:
            assert_close(y, reference_linear(x, w).astype(np.float32))
            assert_close(y1, reference_linear(x[:1], w).astype(np.float32)[0])
    finally:
        set_threads(before)


def test_get_threads_is_per_calling_thread():
    import threading

    seen = []

    def worker():
        set_threads(1)
        seen.append((get_threads(), numba.get_num_threads()))

    before = get_threads()
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(1, 1)] and get_threads() == before == numba.get_num_threads()


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, "2", True])
def test_set_threads_rejects(bad):
    with pytest.raises(KernelArgumentError, match="threads .* should be an int in"):
        set_threads(bad)


def test_warmup_compiles_every_tile_and_dtype():
    warmup()
    assert {str(sig[0].dtype) for sig in buffers._bytes_after.signatures} >= {"float32", "float64"}
    kernels = ([_jit.spmv, _jit.pad_phases, _jit.pack_rows_kernel(pack_lanes()), _jit.pad_input, _jit.subsample]
               + [_jit.spmm_kernel(t) for t in _jit.TILES]
               + [_jit.direct_conv_kernel(t) for t in _jit.TILES]
               + [_jit.pointwise_conv_kernel(t) for t in step_widths()])
    for k in kernels + [_jit.serial(k) for k in kernels] + [norm._layer_norm_rows, norm._serial_rows,
                                                          norm._add_layer_norm_rows, norm._serial_add_rows,
                                                          _depthwise3x3_jit.depthwise3x3_kernel,
                                                          _depthwise3x3_jit.serial_depthwise3x3_kernel,
                                                          _depthwise_jit.depthwise_kernel,
                                                          _depthwise_jit.serial_depthwise_kernel]:
        dtypes = {str(sig[0].dtype) for sig in k.signatures}
        assert {"float32", "float64"} <= dtypes, (k, dtypes)


def test_kernel_closures_hold_only_numbers():
    # A closure over a dispatcher gets a new on-disk cache key in every process, so the
    # kernel would be recompiled (seconds) on every start and the cache would grow.
    kernels = ([_jit.spmm_kernel(t) for t in _jit.TILES] + [_jit.direct_conv_kernel(t) for t in _jit.TILES]
               + [_jit.pointwise_conv_kernel(t) for t in _jit.TILES])
    for k in kernels + [_jit.serial(k) for k in kernels]:
        for cell in k.py_func.__closure__ or ():
            assert isinstance(cell.cell_contents, (int, np.integer)), (k, cell.cell_contents)
