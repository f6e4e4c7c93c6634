"""Consent to run code a file names: a run directory is data, and data never runs code on its own."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Iterable

from sparsify.errors import ModelError, SparsifyError


@dataclasses.dataclass(frozen=True)
class CodeTrust:
    """Which ``package.module:attr`` references named by a file may be imported and called.

    ``everything`` trusts every reference (``--trust-code``); ``refs`` trusts exactly those
    (``--trust-code package.module:attr``). The default trusts none.
    """

    everything: bool = False
    refs: frozenset[str] = frozenset()

    @staticmethod
    def from_options(values: Iterable[str | None] | None) -> "CodeTrust":
        """From the CLI's repeatable ``--trust-code [REF]``: a bare flag trusts everything."""
        values = list(values or [])
        refs = frozenset(v for v in values if v)
        return CodeTrust(everything=len(refs) < len(values), refs=refs)

    def allows(self, ref: str) -> bool:
        return self.everything or ref in self.refs


TRUST_ALL = CodeTrust(everything=True)


def require_consent(ref: str, field: str, source: str | Path, trust: CodeTrust,
                    error: type[SparsifyError] = ModelError) -> None:
    """Refuse to import ``ref`` (read from ``field`` of ``source``) unless ``trust`` allows it."""
    if not trust.allows(ref):
        raise error(
            f"{source} names the code reference {ref!r} in its field {field!r}; importing it would run code "
            f"from that file on this machine, which sparsify does only with your consent. If you trust where "
            f"{source} comes from, give --trust-code {ref} (or a bare --trust-code to allow every code "
            f"reference it names; Python API: trust=sparsify.trust.TRUST_ALL)"
        )


def add_trust_option(parser: argparse.ArgumentParser) -> None:
    """The CLI's ``--trust-code [MODULE:ATTR]`` (read back with :meth:`CodeTrust.from_options`)."""
    parser.add_argument("--trust-code", action="append", nargs="?", const="", metavar="MODULE:ATTR",
                        help="allow importing the code reference a run directory names for its model or data "
                             "(repeatable; bare: every reference). A run is data: without this, sparsify "
                             "imports nothing its manifest names")
