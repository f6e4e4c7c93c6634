"""Thread control and JIT warm-up for the kernels, and the choice of Numba's threading layer."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Iterator

import numba
import numpy as np

# Numba's threading layer, chosen by measurement (benchmarks/bench_threading.py, results in
# benchmarks/results/threading.json and benchmarks/README.md): TBB, because beside ONNX
# Runtime and torch in one process on the loaded 2-core VM (load 5.5-13) our 2-thread
# 1024^2 batch-1 kernel kept p50 19-35 us and p90 <= 2x p50 under it, while omp with its
# bounded spin stalled (p50 0.53-0.60 ms, p90 4-7x p50) and workqueue woke slowly (p50
# 59-69 us). Numba tries TBB first anyway; a
# pip-installed libtbb sits in <prefix>/lib, outside the loader's path, so it is loaded
# here before any parallel kernel starts. Without it Numba falls back to omp (then
# sparsify's bounded OpenMP spin applies, see sparsify/__init__.py).
THREADING_LAYER = "tbb"


def _load_tbb() -> bool:
    """Make the tbb wheel's libtbb loadable for Numba's tbb layer (True when loaded)."""
    if numba.config.THREADING_LAYER not in ("default", THREADING_LAYER):
        return False
    for lib in ("libtbb.so.12", "libtbb.so"):
        try:
            ctypes.CDLL(os.path.join(sys.prefix, "lib", lib), mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


TBB_LOADED = _load_tbb()

from . import _jit, depthwise, elementwise, ell, norm, pool, spmm
from .buffers import empty_with_slack, readable_after
from .conv import SparseConv2d
from .csr import CSR
from .errors import KernelArgumentError
from .spmm import SparseLinear


def check_threads(n: int) -> int:
    """``n`` as an int when the kernels can run on that many threads (1 <= n <=
    numba.config.NUMBA_NUM_THREADS, this machine's limit), else KernelArgumentError."""
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= limit:
        raise KernelArgumentError(f"threads {n!r} should be an int in [1, {limit}] (this machine's thread limit)")
    return int(n)


def set_threads(n: int) -> None:
    """Use ``n`` threads in the parallel kernels (see :func:`check_threads`).

    Like ``numba.set_num_threads``, which it wraps, the setting applies to the calling
    thread (and the parallel regions it launches).
    """
    numba.set_num_threads(check_threads(n))


def threading_layer() -> str:
    """The threading layer the parallel kernels run on (starts the pool when needed)."""
    numba.get_num_threads()
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet in this Numba
        return numba.config.THREADING_LAYER


def get_threads() -> int:
    """Number of threads the parallel kernels use from the calling thread."""
    global _raw_get_threads
    if _raw_get_threads is not None:
        n = _raw_get_threads()
        if n > 0:
            return n
    n = numba.get_num_threads()  # starts the thread pool when needed, checks the result
    if _raw_get_threads is None:
        _raw_get_threads = _private_get_threads()
    return n


@contextlib.contextmanager
def kept_threads() -> Iterator[int]:
    """Restore the calling thread's kernel thread count on exit, whatever the code inside set
    (a ``sparsify.runtime.Session`` sets its own on every run); yields the count kept."""
    n = get_threads()
    try:
        yield n
    finally:
        set_threads(n)


def _private_get_threads():
    """Numba's unchecked per-thread getter behind ``numba.get_num_threads`` (1.1 against
    0.17 us; Session.run asks on every call), or None when this Numba has no such thing.
    Only used once the pool is running; a result of 0 or less sends get_threads back to
    the public function."""
    try:
        from numba.np.ufunc.parallel import _get_num_threads
    except ImportError:
        return None
    return _get_num_threads if callable(_get_num_threads) else None


_raw_get_threads = None


def warmup(dtypes=(np.float32, np.float64), index_dtypes=(np.int16, np.int32)) -> None:
    """Compile (or load from the on-disk cache) every kernel signature the wrappers use.

    Runs, on tiny inputs, for each value dtype and column-index dtype (int32 indptr;
    ``CSR.from_dense`` picks int16 indices up to 32768 columns): the SpMV kernels (the
    sliced-ELL ones, padded and compact, with and without prefetches, for float32 where
    AVX-512 makes them available), the SpMM kernel at every batch tile width
    (``_jit.TILES``), the input packing, the direct conv at every column width with its
    input planes, the pointwise conv at every step width (and a strided one's subsampling), the depthwise
    conv (its 3x3 kernel at strides 1 and 2, and the general one), and the layer norm and the
    residual Add + Relu and the max pool, each in its parallel version and its serial twin. Call
    it once before timing or serving, not while other threads call the kernels (it switches
    ``spmm.SERIAL_WORK``). The first call in a fresh environment can take a minute or
    more; later processes load the on-disk cache. Other index dtypes (int64) compile
    on first use.
    """
    rng = np.random.default_rng(0)
    saved = spmm.SERIAL_WORK, depthwise.SERIAL_WORK
    try:
        # Tiny inputs: once through the parallel kernels, once through their serial twins.
        for serial_work in (0, np.inf):
            spmm.SERIAL_WORK = depthwise.SERIAL_WORK = serial_work
            for dtype in dtypes:
                for index_dtype in index_dtypes:
                    w = CSR.from_dense(rng.standard_normal((4, 9)).astype(dtype),
                                       index_dtype=index_dtype)
                    layer = SparseLinear(w, activation="relu", batch1="csr")
                    layer(np.ones(9, dtype))
                    if ell.AVAILABLE and dtype == np.float32:
                        for batch1 in ("ell", "ell_compact"):  # one row, then a 4-row pass
                            ell_layer = SparseLinear(w, activation="relu", batch1=batch1)
                            for prefetch in (False, True):
                                ell_layer.set_batch1_layout(ell_layer.ell, prefetch)
                                ell_layer(np.ones(9, dtype))
                                ell_layer(np.ones((_jit.MAX_PERMUTE_VECTORS, 9), dtype))
                    for tile in _jit.TILES:
                        layer(np.ones((tile, 9), dtype))
                    conv = SparseConv2d(w, kernel_size=3, padding=1)
                    for tile in _jit.TILES:  # the direct kernel: every column width
                        conv(np.ones((1, 1, 1, tile), dtype))
                    SparseConv2d(w, kernel_size=3, stride=2)(np.ones((1, 1, 3, 3), dtype))
                    pointwise = SparseConv2d(w.row_slice(0, 4), kernel_size=1)
                    for positions in (8, 40, 200):  # the pointwise kernel: every step width it picks
                        pointwise(np.ones((1, 9, 1, positions), dtype))
                    SparseConv2d(w, kernel_size=1, stride=2)(np.ones((1, 9, 3, 3), dtype))
                dw = np.ones((2, 1, 3, 3), dtype)
                for stride, padding in (((1, 1), (1, 1, 1, 1)), ((2, 2), (1, 1, 1, 1)), ((1, 1), (0, 0, 0, 0))):
                    depthwise.DepthwiseConv2d(dw, None, stride, padding, activation_bounds=(0.0, 6.0))(
                        np.ones((1, 2, 4, 4), dtype))
        for dtype in dtypes:  # the runtime's LayerNormalization (after a residual Add or not), both twins
            x, v = np.ones((2, 4), dtype), np.ones(4, dtype)
            for kernel in (norm._layer_norm_rows, norm._serial_rows):
                kernel(x, v, v, 1e-5, np.empty_like(x))
            for kernel in (norm._add_layer_norm_rows, norm._serial_add_rows):
                kernel(x, x, v, v, 1e-5, np.empty_like(x), np.empty_like(x))
            flat = np.ones(8, dtype)  # the residual Add + Relu, both twins
            for kernel in (elementwise._add_relu, elementwise._serial_add_relu):
                kernel(flat, flat, dtype(0), np.empty_like(flat))
            readable_after(empty_with_slack((1, 1, 2, 2), dtype, 64))  # a 1x1 conv's check of its input's slack
            image = np.ones((1, 1, 4, 4), dtype)  # the MaxPool, both twins
            for kernel in (pool._max_pool2d, pool._serial_max_pool2d):
                kernel(image, 3, 3, 2, 2, 1, 1, 1, 1, np.empty((1, 1, 2, 2), dtype))
    finally:
        spmm.SERIAL_WORK, depthwise.SERIAL_WORK = saved
