"""Exceptions raised by the kernels layer.

``kernels`` may not import ``sparsify``, so it cannot raise
``sparsify.errors.KernelInputError`` itself. Both classes below derive from
``KernelValueError`` (a ``ValueError``); the sparse runtime catches
``KernelValueError`` and re-raises it as ``KernelInputError`` with the layer name.
"""

from __future__ import annotations


class KernelValueError(ValueError):
    """Base class: arrays handed to a kernel violate its contract. The runtime wraps it."""


class CSRFormatError(KernelValueError):
    """A CSR matrix breaks a format invariant (dtype, length, order, range).

    ``array`` names the offending array ("data", "indices" or "indptr"; None when the
    problem is the shape). The sparse runtime wraps it into ``sparsify.errors.KernelInputError``.
    """

    def __init__(self, message: str, array: str | None = None) -> None:
        super().__init__(message)
        self.array = array


class KernelArgumentError(KernelValueError):
    """An input, bias or output array has the wrong shape, dtype or layout for a kernel.

    The sparse runtime wraps it into ``sparsify.errors.KernelInputError``.
    """
