"""Numba kernels over plain arrays (installed as ``sparsify.kernels``); imports numpy and numba only."""
