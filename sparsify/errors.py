"""The error hierarchy: everything sparsify raises on bad input derives from SparsifyError.

The CLI prints the message of a SparsifyError as one paragraph and exits non-zero;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class SparsifyError(Exception):
    """Base class: a problem the user can fix, explained in the message."""

    exit_code = 2


class ModelError(SparsifyError):
    """A model reference, factory or its weights could not be used."""


class DataError(SparsifyError):
    """A data set reference or input specification could not be used."""


class RunError(SparsifyError):
    """A run directory is missing, corrupt, tampered with, or cannot be written."""


class PruneError(SparsifyError):
    """A pruning request cannot be satisfied (bad sparsity, nothing matched, unsupported op)."""


class ExportError(SparsifyError):
    """A model could not be exported or written to the requested destination."""


class VerificationError(ExportError):
    """An exported model's outputs differ from the reference beyond tolerance."""

    exit_code = 3


class ModelFileError(SparsifyError):
    """A model file (ONNX, sparse ONNX) is not what it claims to be, or is corrupt."""


class KernelInputError(SparsifyError):
    """Arrays reaching an op at run time violate its contract: a sparse kernel's format or
    shape, a glue op's or an ONNX Runtime segment's shape rules (the message names the node)."""
