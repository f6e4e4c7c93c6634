"""What `sparsify export` accepts: one declaration for the CLI flags, recipe export stages and the API.

Kept free of heavy imports, so the CLI builds its parser without loading torch or ONNX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sparsify.errors import ExportError
from sparsify.options import Bounds, check_fields, option

MODES = ("dense", "slim", "sparse")
FORMATS = ("onnx", "torch")
EXTERNAL_DATA_CHOICES = ("auto", "always", "never")
# Verification tolerances: fp32 on unit-scale inputs (README, "Every export is verified").
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
# Options that only --mode sparse reads.
SPARSE_ONLY = ("density_threshold", "target_batch", "target_threads")


def check_mode_options(options: dict[str, Any], mode: str) -> None:
    """ExportError when options of --mode sparse (``options``, by keyword) come with another mode."""
    if options and mode != "sparse":
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(options))
        verb = "applies" if len(options) == 1 else "apply"
        raise ExportError(f"{flags} {verb} to --mode sparse only, not --mode {mode}")


@dataclasses.dataclass
class ExportOptions:
    """The arguments of `sparsify export` (and of a recipe's export stage)."""

    format: str = option("onnx", "file format (torch: a pickle-free .pt2, --mode slim only)", choices=FORMATS)
    mode: str = option("dense", "dense (masks folded), slim (pruned channels removed) or sparse (CSR kernels)",
                       choices=MODES)
    verify: bool = option(True, "check the export against the masked model", flag=False)
    atol: float = option(DEFAULT_ATOL, "verification absolute tolerance", bounds=Bounds(0.0, lo_open=True))
    rtol: float = option(DEFAULT_RTOL, "verification relative tolerance", bounds=Bounds(0.0))
    opset: int | None = option(None, "ONNX opset (default: the exporter's, 18)", bounds=Bounds(7))
    external_data: str = option("auto", "put the weights in OUTPUT.data beside the ONNX file: auto (when they pass "
                                "~1.75 GiB; one protobuf holds at most 2 GiB), always, never",
                                choices=EXTERNAL_DATA_CHOICES)
    density_threshold: float | None = option(None, "sparse mode: convert layers whose density is below this "
                                             "(default: decided per layer on this host)",
                                             bounds=Bounds(0.0, 1.0))
    target_batch: int | None = option(None, "sparse mode: batch size the conversion is chosen for", bounds=Bounds(1))
    target_threads: int | None = option(None, "sparse mode: threads the model will run with, at which its layers "
                                        "are timed (default: all of this machine's)", bounds=Bounds(1))

    def validate(self) -> "ExportOptions":
        check_fields(self)
        return self

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``sparsify.api.export_model``."""
        out = {"fmt": self.format, "mode": self.mode, "verify": self.verify, "atol": self.atol, "rtol": self.rtol,
               "opset": self.opset, "external_data": self.external_data}
        out.update({k: getattr(self, k) for k in SPARSE_ONLY if getattr(self, k) is not None})
        return out
