"""A description of the machine and software: the CPU model that keys host calibrations
(``sparsify.runtime.calibrate``) and the machine a benchmark ran on (its JSON report).

Package versions come from installed metadata, so describing the machine never imports
torch or numba.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose versions go in the report (None when not installed).
PACKAGES = ("numpy", "torch", "onnxruntime", "onnx", "numba")


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The ``model name`` line of /proc/cpuinfo, else ``platform.processor()``, else ``"unknown"``."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None when it is missing."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, usable cores, OS, Python and package versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(),
    }
