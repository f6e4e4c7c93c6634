"""Shared fixtures for the kernel tests: random sparse weights and float64 references."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from sparsify.kernels.csr import CSR


def random_sparse(rng: np.random.Generator, shape, density: float, dtype=np.float32,
                  empty_rows: bool = False) -> np.ndarray:
    """A dense array with about ``density`` of its entries nonzero (exactly 0 or 1 honoured)."""
    w = rng.standard_normal(shape)
    w[rng.random(shape) >= density] = 0.0
    if empty_rows and shape[0] > 1:
        w[:: 2] = 0.0
    return w.astype(dtype)


def reference_linear(x, w_dense, bias=None, activation=None) -> np.ndarray:
    """act(x @ w.T + b) computed in float64 (torch's GELU for the erf activation)."""
    y = x.astype(np.float64) @ w_dense.astype(np.float64).T
    if bias is not None:
        y = y + bias.astype(np.float64)
    t = torch.from_numpy(y)
    if activation == "relu":
        t = torch.relu(t)
    elif activation == "gelu":
        t = torch.nn.functional.gelu(t)
    elif activation == "relu6":
        t = torch.nn.functional.relu6(t)
    return t.numpy()


@contextlib.contextmanager
def serial_work_set_to(value):
    """Temporarily set spmm.SERIAL_WORK (0: always parallel kernels, inf: always serial)."""
    from sparsify.kernels import spmm
    saved = spmm.SERIAL_WORK
    spmm.SERIAL_WORK = value
    try:
        yield
    finally:
        spmm.SERIAL_WORK = saved


@pytest.fixture(params=["parallel", "serial"])
def path(request, monkeypatch):
    """Force every call through the parallel kernels or through their serial twins."""
    from sparsify.kernels import spmm
    monkeypatch.setattr(spmm, "SERIAL_WORK", 0 if request.param == "parallel" else float("inf"))
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make_csr(w: np.ndarray) -> CSR:
    return CSR.from_dense(w)


def take_layout_at_any_fill(monkeypatch) -> None:
    """Make ``batch1="auto"`` take the sliced ELL whatever its fill, in every geometry."""
    from sparsify.kernels import ell
    for name, geo in list(ell.GEOMETRIES.items()):
        monkeypatch.setitem(ell.GEOMETRIES, name, geo._replace(min_fill=0.0))
