"""The error hierarchy: everything sparsify raises on bad input derives from SparsifyError.

The CLI prints the message of a SparsifyError as one paragraph and exits with its
``exit_code``. Any other exception escaping a command is reported the same way, naming
the command (``sparsify --debug`` shows its traceback); ``in_step`` names the step too.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


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


class StepError(SparsifyError):
    """An unexpected failure inside one step of a command (capture, export, verification…)."""


def one_paragraph(text: str, limit: int = 1200) -> str:
    """``text`` on one line (runs of whitespace collapsed), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextlib.contextmanager
def in_step(step: str, subject: str, hint: str = "") -> Iterator[None]:
    """Turn any non-sparsify exception raised inside into a StepError naming the step and subject.

    ``hint`` says what the user can do; SparsifyErrors pass through unchanged.
    """
    try:
        yield
    except SparsifyError:
        raise
    except MemoryError as exc:
        raise StepError(f"{step} of {subject} ran out of memory ({one_paragraph(exc) or 'MemoryError'}); "
                        "free memory or use a smaller model or batch") from exc
    except Exception as exc:
        detail = one_paragraph(f"{type(exc).__name__}: {exc}", 600)
        raise StepError(f"{step} of {subject} failed: {detail}" + (f"; {hint}" if hint else "")) from exc
