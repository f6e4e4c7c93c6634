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

    The sparse runtime wraps it into ``sparsify.errors.KernelInputError``.
    """


class KernelArgumentError(KernelValueError):
    """An input, bias or output array has the wrong shape, dtype or layout for a kernel.

    The sparse runtime wraps it into ``sparsify.errors.KernelInputError``.
    """
